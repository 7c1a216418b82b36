"""Where files come from: a local folder (never the network) or a hub id (cache first, network only if allowed).

A hub id is looked up in huggingface_hub's cache first; the network is used only when the file is not
cached, `local_files_only` is False and `HF_HUB_OFFLINE` is not set.
"""
from __future__ import annotations

import os
from pathlib import Path


def is_offline(local_files_only: bool = False) -> bool:
    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    return bool(local_files_only) or flag in ("1", "true", "yes", "on")


def looks_like_hub_id(name: str) -> bool:
    parts = str(name).split("/")
    return len(parts) == 2 and all(parts) and not str(name).startswith((".", "/", "~"))


def _hub_download(repo_id: str, filename: str, subfolder: str | None, local_files_only: bool, **kw) -> Path | None:
    """Return a cached (or downloaded) file, or None if the repo does not have it."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    args = dict(repo_id=repo_id, filename=filename, subfolder=subfolder or None,
                revision=kw.get("revision"), cache_dir=kw.get("cache_dir"), token=kw.get("token"))
    try:
        return Path(hf_hub_download(**args, local_files_only=True))
    except (LocalEntryNotFoundError, EntryNotFoundError, FileNotFoundError):
        pass
    if is_offline(local_files_only):
        return None
    try:
        return Path(hf_hub_download(**args))
    except EntryNotFoundError:
        return None


def resolve_file(path_or_id: str | os.PathLike, filename: str, subfolder: str | None = None, *,
                 required: bool = True, local_files_only: bool = False, **hub_kwargs) -> Path | None:
    """Find `filename` (inside `subfolder`) in a local folder or a hub repo.

    A missing required file raises FileNotFoundError naming where it was looked for.
    """
    base = Path(os.path.expanduser(str(path_or_id)))
    if base.exists():
        file = base / subfolder / filename if subfolder else base / filename
        if file.is_file():
            return file
        if required:
            raise FileNotFoundError(f"{file}: no such file (looked in the local folder {base})")
        return None
    if not looks_like_hub_id(str(path_or_id)):
        raise FileNotFoundError(f"{path_or_id}: no such local folder, and not a hub id of the form 'owner/name'")
    found = _hub_download(str(path_or_id), filename, subfolder, local_files_only, **hub_kwargs)
    if found is None and required:
        where = f"{subfolder}/{filename}" if subfolder else filename
        why = "not in the local cache and the network is off (HF_HUB_OFFLINE or local_files_only)" \
            if is_offline(local_files_only) else "not in that repository"
        raise FileNotFoundError(f"{path_or_id}: {where} {why}")
    return found


def local_dir(path_or_id: str | os.PathLike) -> Path | None:
    """The local folder for a path, or None if it is a hub id."""
    base = Path(os.path.expanduser(str(path_or_id)))
    return base if base.exists() else None
