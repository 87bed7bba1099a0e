"""Reaching the Hugging Face Hub, or failing fast and clearly when it cannot be reached.

Without a network, `from_pretrained` and `load_dataset` retry for about 25 seconds and then raise an
error from deep inside huggingface_hub. One short connection attempt up front turns that into a
message, within seconds, that says how to run offline.
"""

from __future__ import annotations

import functools
import os
import socket
from urllib.parse import urlparse

from .config import ConfigError

OFFLINE_HINT = (
    "To run offline, use the quick preset (python -m mlm_helpers train --preset quick), or a local "
    "model folder and local text: --model PATH/TO/MODEL --data-files YOUR_TEXT.txt"
)


class HubUnreachableError(ConfigError):
    """The Hugging Face Hub is needed but cannot be reached (no network, or offline mode is set)."""


def offline_mode() -> bool:
    """True when the user asked huggingface_hub to stay offline."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


@functools.cache
def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the Hub's endpoint opens within `timeout` seconds."""
    if offline_mode():
        return False
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def unreachable_reason() -> str | None:
    """Why the Hub cannot be reached ("HF_HUB_OFFLINE is set", or its endpoint does not answer), for a
    message; None when it can be."""
    if hub_reachable():
        return None
    from huggingface_hub import constants

    return "HF_HUB_OFFLINE is set" if offline_mode() else f"{constants.ENDPOINT} cannot be reached"


def require_hub(what: str) -> None:
    """Raise HubUnreachableError, naming `what` was to be downloaded, when the Hub is out of reach."""
    reason = unreachable_reason()
    if reason:
        raise HubUnreachableError(f"Cannot download {what}: {reason}.\n{OFFLINE_HINT}")


def in_hub_cache(repo_id: str) -> bool:
    """Whether a Hub model's config is already in the local Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except ValueError:  # not a valid repo id
        return False
