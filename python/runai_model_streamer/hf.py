"""hf:// paths: files of a Hugging Face Hub model repository, resolved to the
Hub's https resolve URLs by the huggingface_hub package (the optional extra
``model-streamer[hf]``), then streamed by the http(s) backend.

    hf://ORG/MODEL/PATH/IN/REPO.safetensors            a file, revision main
    hf://ORG/MODEL@REVISION/PATH/IN/REPO.safetensors   a file at a branch, tag or commit
    hf://ORG/MODEL[@REVISION][/]                       the repository (listing: list_safetensors,
                                                       pull_files, model-streamer pull)

URLs come from huggingface_hub.hf_hub_url and listings from
HfApi.list_repo_files, so HF_ENDPOINT, revisions and the Hub's URL scheme are
the package's, not a copy of them here. HF_TOKEN is sent by the http backend
to the Hub's hosts only (and by huggingface_hub for listings). Model
repositories only (not datasets or spaces)."""

from __future__ import annotations

import os
from typing import List, Optional, Tuple

from runai_model_streamer.exceptions import RunaiStreamerInvalidInputException

SCHEME = "hf://"


def is_hf_path(path: str) -> bool:
    return isinstance(path, str) and path.startswith(SCHEME)


def _hub():
    try:
        import huggingface_hub
    except ImportError:
        raise RunaiStreamerInvalidInputException(
            "hf:// paths need the huggingface_hub package: pip install 'model-streamer[hf]' "
            "(or huggingface_hub)") from None
    return huggingface_hub


def parse(path: str) -> Tuple[str, Optional[str], str]:
    """(repo_id, revision or None, path in the repository ("" for the whole
    repository)) of an hf:// path."""
    if not is_hf_path(path):
        raise RunaiStreamerInvalidInputException(f"{path!r} is not an hf:// path")
    rest = path[len(SCHEME):]
    parts = rest.split("/", 2)
    if len(parts) < 2 or not parts[0] or not parts[1].split("@", 1)[0]:
        raise RunaiStreamerInvalidInputException(
            f"{path}: want hf://ORG/MODEL[@REVISION][/PATH]")
    org, model = parts[0], parts[1]
    revision = None
    if "@" in model:
        model, revision = model.split("@", 1)
        if not revision:
            raise RunaiStreamerInvalidInputException(f"{path}: empty revision after '@'")
    inner = parts[2] if len(parts) == 3 else ""
    return f"{org}/{model}", revision, inner


def _endpoint() -> Optional[str]:
    # Read at each call, as every other setting: huggingface_hub reads
    # HF_ENDPOINT once, at its import.
    return os.environ.get("HF_ENDPOINT") or None


def resolve(path: str) -> str:
    """The https URL of the file an hf:// path names."""
    repo_id, revision, inner = parse(path)
    if not inner or inner.endswith("/"):
        raise RunaiStreamerInvalidInputException(
            f"{path}: names a repository or folder, not a file (list it with list_safetensors)")
    return _hub().hf_hub_url(repo_id, inner, revision=revision, endpoint=_endpoint())


def list_files(path: str) -> List[Tuple[str, str]]:
    """(path in the repository, URL) of every file under an hf:// repository
    or folder, listed by huggingface_hub (recursive), sorted."""
    hub = _hub()
    repo_id, revision, inner = parse(path)
    prefix = inner.rstrip("/") + "/" if inner.strip("/") else ""
    api = hub.HfApi(endpoint=_endpoint())
    files = api.list_repo_files(repo_id, revision=revision)
    out = []
    for name in sorted(files):
        if prefix and not name.startswith(prefix):
            continue
        out.append((name[len(prefix):], hub.hf_hub_url(repo_id, name, revision=revision, endpoint=_endpoint())))
    return out
