"""Publishing a saved model folder on the Hugging Face Hub: `train --push-to-hub` and the `push` command.

A push that cannot work is refused before anything else happens (`check_push`): the Hub must answer,
and the token the upload would use must be one the Hub accepts for writing. `train` checks this before
it trains, so a missing login fails in seconds, not after hours of training. The upload (`push_model`)
is one commit: the folder's files and the run's loss plot arrive together, or not at all.
"""

from __future__ import annotations

import json
from pathlib import Path

from .config import ConfigError, check_repo_id
from .fileio import MARK, marked_files
from .hub import offline_mode, unreachable_reason

LOGIN_HINT = (
    "log in with `hf auth login`, or set HF_TOKEN to a token with write access "
    "(https://huggingface.co/settings/tokens)"
)


class PublishError(ConfigError):
    """A push to the Hub cannot work, or failed; the message says what to do."""


def check_push(repo_id: str, what: str, instead: str | None = None) -> None:
    """Raise PublishError, within seconds, unless a push to `repo_id` can work: the id well formed, the
    Hub reachable, and a token found (HF_TOKEN or a saved login) that the Hub accepts and that may write.
    `what` names the repo id in messages ("--push-to-hub"); `instead` is the way out they offer.

    >>> check_push("alice/bert-finetuned", "REPO_ID")
    """
    check_repo_id(repo_id, what)
    otherwise = f"; or {instead}" if instead else ""
    reason = unreachable_reason()
    if reason:
        fix = "unset HF_HUB_OFFLINE" if offline_mode() else "check the network connection"
        raise PublishError(f"Cannot push to {repo_id}: {reason}. To push, {fix}{otherwise}.")
    from huggingface_hub import HfApi, get_token

    token = get_token()
    if token is None:
        raise PublishError(
            f"Cannot push to {repo_id}: no Hugging Face token found. To push, {LOGIN_HINT}{otherwise}."
        )
    try:
        role = HfApi().whoami(token).get("auth", {}).get("accessToken", {}).get("role")
    except Exception as error:  # the Hub's and its HTTP client's errors; see push_model
        status = getattr(getattr(error, "response", None), "status_code", None)
        problem = "is invalid or expired" if status == 401 else f"could not be checked ({_cause(error)})"
        raise PublishError(
            f"Cannot push to {repo_id}: the Hugging Face token found {problem}. To push, {LOGIN_HINT}"
            f"{otherwise}."
        ) from error
    if role == "read":
        raise PublishError(
            f"Cannot push to {repo_id}: the Hugging Face token found is read-only. To push, {LOGIN_HINT}"
            f"{otherwise}."
        )


def check_model_folder(folder: str | Path) -> None:
    """Raise PublishError unless `folder` is a model folder that `train` saved: marked as written by
    mlm_helpers, with a config and weights in safetensors (not a checkpoint, nor an ONNX export)."""
    folder = Path(folder)
    files = marked_files(folder) if folder.is_dir() else None
    if files is None or "config.json" not in files or not any(f.endswith(".safetensors") for f in files):
        raise PublishError(
            f"{folder} is not a model folder that mlm_helpers saved (one with {MARK}, config.json and "
            "safetensors weights): push uploads what train saved, such as --model bert_finetuned. Upload "
            "another folder with `hf upload REPO_ID FOLDER`."
        )


def run_plot(model_dir: str | Path, output_dir: str | Path) -> Path | None:
    """The loss plot of the run that saved `model_dir`: `output_dir`/loss.png when the summary.json
    beside it names that model folder, else None (the plot of another run is never uploaded)."""
    output_dir = Path(output_dir)
    try:
        summary = json.loads((output_dir / "summary.json").read_text(encoding="utf-8"))
        saved_to = Path(summary["config"]["model_dir"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    plot = output_dir / "loss.png"
    return plot if plot.is_file() and saved_to.resolve() == Path(model_dir).resolve() else None


def push_model(model_dir: str | Path, repo_id: str, private: bool = False, plot: Path | None = None) -> str:
    """Upload a saved model folder (weights, tokenizer, model card) and the run's loss plot to the Hub
    repo `repo_id` in one commit, creating the repo if needed (`private` then; an existing repo keeps its
    visibility), and return the repo's URL. Run `check_push` first: this only uploads.

    >>> push_model("bert_finetuned", "alice/bert-finetuned", plot=Path("outputs/loss.png"))
    'https://huggingface.co/alice/bert-finetuned'
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    model_dir = Path(model_dir)
    files = sorted(p for p in model_dir.rglob("*") if p.is_file() and p.name != MARK)  # the mark is ours
    operations = [CommitOperationAdd(p.relative_to(model_dir).as_posix(), p) for p in files]
    if plot is not None:
        operations.append(CommitOperationAdd(plot.name, plot))
    api = HfApi()
    try:
        url = api.create_repo(repo_id, private=True if private else None, exist_ok=True)
        api.create_commit(url.repo_id, operations, commit_message=f"Upload {model_dir.name} (mlm_helpers)")
    # The upload's errors come from the Hub (HfHubHTTPError), from the HTTP library huggingface_hub uses
    # (httpx under 1.x, httpx2 under 2.x) and from Xet: whichever, the saved folder is intact, and the
    # message says how to try again.
    except Exception as error:
        raise PublishError(
            f"Could not push {model_dir} to {repo_id} ({_cause(error)}). The folder is saved and unchanged: "
            f"push it again with python -m mlm_helpers push --model {model_dir} {repo_id}"
        ) from error
    return str(url)


def _cause(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
