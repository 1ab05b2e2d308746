"""Object storage helpers at the reference's path, runai_model_streamer.s3_utils.s3_utils.

The reference reaches each store through a companion package
(runai-model-streamer-s3, -gcs, -azure) and boto3 or the cloud SDKs; here
every helper goes through this package's own native backends, so none of
those packages is needed and the helpers behave the same on every store:

- ``s3_glob`` / ``gcs_glob`` / ``azure_glob``: the objects directly under a
  prefix (not recursive) whose name matches one of ``allow_pattern``, as
  full URIs, sorted.
- ``s3_pull_files`` / ``gcs_pull_files`` / ``azure_pull_files``: everything
  under a prefix (recursive) copied into a local directory, with fnmatch
  allow / ignore patterns, never writing outside it.

Patterns are matched against the object's key relative to the prefix (its
name, for a glob), so a pattern means the same whatever the prefix is; the
reference matches the whole key, which gives the same result for the
patterns its callers pass ("*.safetensors", "*.json", ...).
"""

from __future__ import annotations

import fnmatch
import importlib
import importlib.util
from types import ModuleType
from typing import List, Optional

from runai_model_streamer.exceptions import RunaiStreamerInvalidInputException
from runai_model_streamer.files import (  # noqa: F401 - public at this path
    S3Credentials,
    is_azure_path,
    is_gs_path,
    is_s3_path,
    list_remote,
    pull_remote,
    uri_scheme,
)

GCS_PROTOCOL_PREFIX = "gs://"
S3_PROTOCOL_PREFIX = "s3://"
AZURE_PROTOCOL_PREFIX = "az://"
DEFAULT_GCS_ENDPOINT_URL = "https://storage.googleapis.com"
AWS_ENDPOINT_URL_ENV = "AWS_ENDPOINT_URL"
AWS_EC2_METADATA_DISABLED_ENV = "AWS_EC2_METADATA_DISABLED"
DEFAULT_AWS_EC2_METADATA_DISABLED = "true"


def get_module(main_module: str, module_name: str) -> Optional[ModuleType]:
    """The module `module_name` of the installed package `main_module`, or
    None when either is not installed."""
    try:
        if importlib.util.find_spec(main_module) is None:
            return None
        if importlib.util.find_spec(module_name) is None:
            return None
    except (ImportError, ValueError):
        return None
    return importlib.import_module(module_name)


# The reference's companion packages. Nothing in this package needs them;
# these lookups are kept for callers that ask whether one is installed.
def get_s3_credentials_module() -> Optional[ModuleType]:
    return get_module("runai_model_streamer_s3", "runai_model_streamer_s3.credentials.credentials")


def get_s3_files_module() -> Optional[ModuleType]:
    return get_module("runai_model_streamer_s3", "runai_model_streamer_s3.files.files")


def get_gcs_files_module() -> Optional[ModuleType]:
    return get_module("runai_model_streamer_gcs", "runai_model_streamer_gcs.files.files")


def get_azure_files_module() -> Optional[ModuleType]:
    return get_module("runai_model_streamer_azure", "runai_model_streamer_azure.files.files")


def filter_allow(paths: List[str], patterns: List[str]) -> List[str]:
    """The paths that match at least one fnmatch pattern."""
    return [p for p in paths if any(fnmatch.fnmatch(p, pattern) for pattern in patterns)]


def filter_ignore(paths: List[str], patterns: List[str]) -> List[str]:
    """The paths that match none of the fnmatch patterns."""
    return [p for p in paths if not any(fnmatch.fnmatch(p, pattern) for pattern in patterns)]


def removeprefix(s: str, prefix: str) -> str:
    """s without a leading prefix (str.removeprefix, kept for old callers)."""
    return s[len(prefix):] if prefix and s.startswith(prefix) else s


def _check_scheme(path: str, scheme: str, helper: str) -> None:
    if uri_scheme(path) != scheme:
        raise RunaiStreamerInvalidInputException(
            f"{helper}: {path!r} is not a {scheme}:// URI"
        )


def _glob(path: str, scheme: str, helper: str, allow_pattern: Optional[List[str]],
          credentials: Optional[S3Credentials]) -> List[str]:
    _check_scheme(path, scheme, helper)
    prefix = path if path.endswith("/") else path + "/"
    names = []
    for uri, _size in list_remote(prefix, False, credentials):
        name = uri[len(prefix):] if uri.startswith(prefix) else uri.rsplit("/", 1)[-1]
        if not name or name.endswith("/"):
            continue  # the prefix itself or a "directory" marker
        names.append((name, uri))
    if allow_pattern is not None:
        allowed = set(filter_allow([n for n, _ in names], list(allow_pattern)))
        names = [(n, u) for n, u in names if n in allowed]
    return sorted(u for _, u in names)


def s3_glob(path: str, allow_pattern: Optional[List[str]] = None,
            s3_credentials: Optional[S3Credentials] = None) -> List[str]:
    """The s3:// URIs of the objects directly under path that match allow_pattern."""
    return _glob(path, "s3", "s3_glob", allow_pattern, s3_credentials)


def gcs_glob(path: str, allow_pattern: Optional[List[str]] = None) -> List[str]:
    """The gs:// URIs of the objects directly under path that match allow_pattern."""
    return _glob(path, "gs", "gcs_glob", allow_pattern, None)


def azure_glob(path: str, allow_pattern: Optional[List[str]] = None) -> List[str]:
    """The az:// URIs of the blobs directly under path that match allow_pattern."""
    return _glob(path, "az", "azure_glob", allow_pattern, None)


def s3_pull_files(model_path: str, dst: str, allow_pattern: Optional[List[str]] = None,
                  ignore_pattern: Optional[List[str]] = None,
                  s3_credentials: Optional[S3Credentials] = None) -> None:
    """Copies every object under the s3:// prefix model_path into dst."""
    _check_scheme(model_path, "s3", "s3_pull_files")
    pull_remote(model_path, dst, allow_pattern, ignore_pattern, s3_credentials)


def gcs_pull_files(model_path: str, dst: str, allow_pattern: Optional[List[str]] = None,
                   ignore_pattern: Optional[List[str]] = None,
                   s3_credentials: Optional[S3Credentials] = None) -> None:
    """Copies every object under the gs:// prefix model_path into dst.
    s3_credentials (ignored by the reference) serve gs:// read through the S3
    API with HMAC keys; the GCS backend takes its own from its settings."""
    _check_scheme(model_path, "gs", "gcs_pull_files")
    pull_remote(model_path, dst, allow_pattern, ignore_pattern, s3_credentials)


def azure_pull_files(model_path: str, dst: str, allow_pattern: Optional[List[str]] = None,
                     ignore_pattern: Optional[List[str]] = None) -> None:
    """Copies every blob under the az:// prefix model_path into dst."""
    _check_scheme(model_path, "az", "azure_pull_files")
    pull_remote(model_path, dst, allow_pattern, ignore_pattern, None)
