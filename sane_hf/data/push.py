"""Upload of a converted zoo dataset folder to a Hub dataset repository."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from huggingface_hub import HfApi

from .info import (
    DATA_DIR,
    INFO_PATH,
    META_DIR,
    ZOO_DATASET_TAG,
)


logger = logging.getLogger(__name__)


def push_zoo_dataset(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    token: str | None = None,
    tag: bool = True,
) -> str:
    """Upload a dataset folder written by `write_zoo_dataset` to a Hub dataset repo (lerobot's `push_to_hub`).

    Creates the repo if needed, uploads the folder in one commit (stale `data/` and `meta/` files of an earlier
    upload are deleted in the same commit, so `data/train-*.parquet` never matches old shards), and tags the
    revision with the format version (`ZOO_DATASET_TAG`), moving the tag if it exists.

    Returns:
        `str`: the URL of the commit.
    """

    folder = Path(folder)
    info_file = folder / INFO_PATH
    if not info_file.is_file():
        raise FileNotFoundError(f"{info_file}: missing; push_zoo_dataset uploads folders written by convert_zoo.")
    api = HfApi(token=token)
    api.create_repo(repo_id=repo_id, repo_type="dataset", private=private, exist_ok=True)
    commit = api.upload_folder(
        repo_id=repo_id,
        folder_path=folder,
        repo_type="dataset",
        revision=revision,
        commit_message=commit_message or "Upload tokenized model zoo (sane_hf)",
        delete_patterns=[f"{DATA_DIR}/*", f"{META_DIR}/*"],
    )
    if tag:
        refs = api.list_repo_refs(repo_id, repo_type="dataset")
        if any(t.name == ZOO_DATASET_TAG for t in refs.tags):
            api.delete_tag(repo_id, tag=ZOO_DATASET_TAG, repo_type="dataset")
        api.create_tag(repo_id, tag=ZOO_DATASET_TAG, revision=getattr(commit, "oid", None), repo_type="dataset")
    url = getattr(commit, "commit_url", None) or str(commit)
    logger.info("Pushed %s to the Hub dataset %s (%s).", folder, repo_id, url)
    return url
