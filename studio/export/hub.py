"""Pushing an export folder to the Hugging Face Hub (checked before any export work starts)."""

from __future__ import annotations

import re
from pathlib import Path

from studio.errors import StudioError

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


class HubError(StudioError):
    """The Hub cannot be reached, no token is configured, or the upload failed."""


def check_hub_ready(repo_id: str) -> str:
    """Return the token to use, or raise before the caller spends time exporting."""
    from studio.models.loader import hub_offline

    if not REPO_ID.match(repo_id):
        raise HubError(f"--push-to-hub '{repo_id}' is not a Hub repository id of the form 'owner/name'.")
    if hub_offline():
        raise HubError(
            "--push-to-hub needs the network, but HF_HUB_OFFLINE is set. Export without --push-to-hub and upload "
            "the folder later with `huggingface-cli upload REPO_ID DIR`."
        )
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise HubError(
            "--push-to-hub needs a Hugging Face token: run `huggingface-cli login` or set HF_TOKEN "
            "(a token with write access), then export again."
        )
    return token


def push_folder(folder: Path, repo_id: str, token: str, *, private: bool = False) -> str:
    """Create ``repo_id`` if needed and upload ``folder``; returns the repository URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, repo_type="model", exist_ok=True, private=private)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                          commit_message="Upload Studio export")
    except Exception as error:  # network, permission and quota errors all surface here
        raise HubError(f"Uploading {folder} to the Hub repository '{repo_id}' failed: {error}") from error
    return str(url)
