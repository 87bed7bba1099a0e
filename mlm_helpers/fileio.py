"""Folders and files written so that no crash, kill or full disk leaves a half-written one, and so that
nothing this project did not write is ever replaced.

`write_folder` is the one way a folder is written (the model folder, an ONNX export, a checkpoint): its
contents go into a staging folder beside the target, get the modes the user's umask gives, are flushed
to disk and marked as complete, and only then take the target's place in one atomic exchange
(``renameat2(RENAME_EXCHANGE)`` on Linux): at every moment the path holds one complete folder, the old
one or the new one. The mark (`MARK`) lists the folder's files; a folder is replaced only when it holds
nothing but what its mark lists, so a user's own folder, or a run's output folder, is refused instead of
deleted. Where the file system cannot exchange two folders, the old folder is renamed aside first, and
the next write to the same path puts back whichever complete folder a kill left beside it.

Nothing here imports torch: a process that only writes folders starts in a fraction of a second.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from .config import ConfigError

MARK = "mlm_helpers.json"  # written last into every folder we write: the folder is complete and ours
STAGING = ".staging-"  # a folder being written, or the old folder just swapped out: .NAME.staging-XXXX
RETIRED = ".retired-"  # the old folder renamed aside where the file system cannot exchange two folders


class FolderInUseError(ConfigError):
    """A path that holds something this project did not write, so it must not be replaced."""


class WriteError(ConfigError):
    """The file system refused a write (a full disk, a quota, a read-only or lost mount): nothing at the
    path changed. `cause` is the system's own words, for callers that say more."""

    def __init__(self, message: str, cause: str) -> None:
        super().__init__(message)
        self.cause = cause


def is_write_failure(error: BaseException) -> bool:
    """Whether `error` is the file system refusing a write, as the writers we call report it: an
    OSError; safetensors' SafetensorError, which carries the OS error in its text ("No space left on
    device"); or torch.save's RuntimeError from its zip writer ("PytorchStreamWriter failed writing
    file"). Anything else is a bug and is not turned into a message."""
    if isinstance(error, OSError):
        return True
    safetensors = sys.modules.get("safetensors")  # not imported: the error cannot be one of its own
    if safetensors is not None and isinstance(error, safetensors.SafetensorError):
        return True
    return isinstance(error, RuntimeError) and "PytorchStreamWriter failed" in str(error)


def _refused(what: str, path: Path, error: BaseException) -> WriteError:
    cause = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return WriteError(
        f"Could not write {what} {path} ({cause}). Nothing at {path} changed: free some space, or check "
        "that the folder is writable, and run the same command again.",
        cause,
    )


def check_replaceable(target: str | Path, what: str = "folder") -> None:
    """Raise FolderInUseError unless `target` is absent, an empty folder, or a folder written by
    `write_folder` that holds nothing its mark does not list. `what` names the path in the message
    (such as "--model-dir")."""
    target = Path(target)
    if not target.exists() and not target.is_symlink():
        return
    if target.is_symlink() or not target.is_dir():
        raise FolderInUseError(
            f"{what} {target} is a file, not a folder: nothing was written. Choose another path, or move "
            "that file away."
        )
    entries = {entry.name for entry in target.iterdir()}
    if not entries:
        return
    listed = marked_files(target)
    if listed is None:
        raise FolderInUseError(
            f"{what} {target} already holds files that mlm_helpers did not write ({_some(entries)}): "
            "nothing was written, and they were left alone. Choose another path, or move them away."
        )
    foreign = entries - listed - {MARK}
    if foreign:
        raise FolderInUseError(
            f"{what} {target} holds files that mlm_helpers did not write ({_some(foreign)}) beside a "
            "folder it wrote: nothing was written, and they were left alone. Move them away, or choose "
            "another path."
        )


def marked_files(folder: str | Path) -> set[str] | None:
    """The file names a folder's mark lists, or None when it has no readable mark (not ours, or not
    complete)."""
    try:
        mark = json.loads((Path(folder) / MARK).read_text(encoding="utf-8"))
        return set(mark["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_folder(target: str | Path, fill: Callable[[Path], None], what: str = "folder") -> Path:
    """Write a folder at `target` atomically: `fill(staging)` writes its files into an empty folder
    beside `target`, which then takes `target`'s place; on any error nothing at `target` changes.

    Refuses (FolderInUseError) a `target` that `check_replaceable` refuses. Leftovers of a write that a
    kill interrupted are cleaned up first.

    >>> write_folder("bert_finetuned", lambda folder: (folder / "config.json").write_text("{}"))
    PosixPath('bert_finetuned')
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover(target)
    check_replaceable(target, what)
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}{STAGING}", dir=target.parent))
    except OSError as error:
        raise _refused(what, target, error) from None
    try:
        fill(staging)
        files = sorted(entry.name for entry in staging.iterdir())
        (staging / MARK).write_text(json.dumps({"written_by": "mlm_helpers", "files": files}, indent=1))
        _apply_umask(staging)
        _fsync_tree(staging)
        if not target.is_dir():
            os.replace(staging, target)
        elif not _exchange(staging, target):  # after an exchange, staging holds the old folder
            retired = target.with_name(f".{target.name}{RETIRED}{staging.name.rsplit('-', 1)[-1]}")
            os.replace(target, retired)
            try:
                os.replace(staging, target)
            except BaseException:
                os.replace(retired, target)
                raise
            staging = retired
        _fsync(target.parent)
    except BaseException as error:
        if is_write_failure(error):
            raise _refused(what, target, error) from None
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # the old folder, or the unfinished new one
    return target


def recover(target: str | Path) -> None:
    """Clean up after a write to `target` that a kill interrupted: with nothing at `target`, the newest
    complete folder left beside it is put back; every other leftover is removed."""
    target = Path(target)
    prefixes = (f".{target.name}{STAGING}", f".{target.name}{RETIRED}")
    if not target.parent.is_dir():
        return
    leftovers = [p for p in target.parent.iterdir() if p.name.startswith(prefixes) and p.is_dir()]
    if not target.exists():
        complete = [p for p in leftovers if marked_files(p) is not None]
        if complete:
            newest = max(complete, key=lambda p: (p / MARK).stat().st_mtime_ns)
            os.replace(newest, target)
            leftovers.remove(newest)
    for leftover in leftovers:
        shutil.rmtree(leftover, ignore_errors=True)


def leftovers(folder: str | Path) -> list[Path]:
    """The staging and retired folders in `folder` that interrupted writes left behind."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    marks = (STAGING, RETIRED)
    return [p for p in folder.iterdir() if p.name.startswith(".") and any(m in p.name for m in marks)]


def write_file_atomic(path: str | Path, write: Callable[[Path], None], what: str = "the file") -> None:
    """Write one file through a temporary file beside it (`write(temporary)`), renamed over `path` once
    flushed: a crash or a full disk leaves the previous file, never half of one (WriteError then)."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(temporary)
        _fsync(temporary)
        os.replace(temporary, path)
    except BaseException as error:
        if is_write_failure(error):
            raise _refused(what, path, error) from None
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()


def write_text_atomic(path: str | Path, text: str) -> None:
    """`write_file_atomic` for a text."""
    write_file_atomic(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


def umask() -> int:
    """The process's umask: read from /proc on Linux, elsewhere set and put back at once."""
    with contextlib.suppress(OSError, ValueError, StopIteration), open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _apply_umask(folder: Path) -> None:
    # mkdtemp makes its folder 0700 and some writers (safetensors) make their files 0600: give every
    # entry the mode an ordinary mkdir or open would, so that another user or a serving container with
    # another uid can read what was saved.
    mask = umask()
    folder.chmod(0o777 & ~mask)
    for path in folder.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            _fsync(path)
    _fsync(folder)


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2); False where the system or file system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:  # a C library older than glibc 2.28
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False  # a file system without exchange (some network and FUSE ones)
    raise OSError(code, os.strerror(code), str(b))


def _some(names: set[str], shown: int = 3) -> str:
    listed = sorted(names)
    more = f" and {len(listed) - shown} more" if len(listed) > shown else ""
    return ", ".join(listed[:shown]) + more


LOCK = ".lock"


@contextlib.contextmanager
def locked_folder(folder: str | Path, what: str = "folder") -> Iterator[Path]:
    """Hold an exclusive lock on `folder` (created if needed) for the duration of the block.

    The lock is an `flock` on ``folder/.lock``, which the kernel releases when the process ends, however
    it ends: a SIGKILL never leaves a stale lock. A second holder fails at once (FolderInUseError) with a
    message naming the process that holds it. Where `fcntl` is missing (Windows) nothing is locked.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:
        yield folder
        return
    descriptor = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 200, 0).decode("utf-8", "replace").strip() or "another process"
            raise FolderInUseError(
                f"{what} {folder} is in use by another run ({holder}). Wait for it to finish, or give this "
                "run another folder."
            ) from None
        os.ftruncate(descriptor, 0)
        since = time.strftime("%Y-%m-%d %H:%M:%S")
        os.pwrite(descriptor, f"process {os.getpid()} on {socket.gethostname()}, since {since}".encode(), 0)
        yield folder
    finally:
        os.close(descriptor)  # releases the lock
