"""Listing and fetching model files: the machinery under list_safetensors,
pull_files and ObjectStorageModel, and S3Credentials.

The public entry points live at the reference's path,
runai_model_streamer.safetensors_streamer.safetensors_streamer, because
callers patch them there; this module does the work."""

from __future__ import annotations

import concurrent.futures
import fnmatch
import os
import re
import shutil
from typing import Callable, Iterable, List, Optional, Sequence, Tuple, Union

from runai_model_streamer.exceptions import (
    RunaiStreamerError,
    RunaiStreamerFileNotFoundError,
    RunaiStreamerInvalidInputException,
)

SAFETENSORS_PATTERN = "*.safetensors"
OBJECT_STORAGE_SCHEMES = ("s3", "gs", "az")
HTTP_SCHEMES = ("http", "https")

# What every message about an http(s) prefix says: there is no listing.
NO_HTTP_LISTING = ("listing is not possible over HTTP: name each file's URL (on the command "
                   "line, with --url-list FILE: a text file of URLs, one per line)")

_SCHEME_RE = r"^([A-Za-z][A-Za-z0-9+.-]*)://"  # compiled on first use, not at import


class S3Credentials:
    """Explicit object storage credentials (all optional)."""

    __slots__ = ("access_key_id", "secret_access_key", "session_token", "region_name", "endpoint")

    def __init__(
        self,
        access_key_id: Optional[str] = None,
        secret_access_key: Optional[str] = None,
        session_token: Optional[str] = None,
        region_name: Optional[str] = None,
        endpoint: Optional[str] = None,
    ) -> None:
        self.access_key_id = access_key_id
        self.secret_access_key = secret_access_key
        self.session_token = session_token
        self.region_name = region_name
        self.endpoint = endpoint

    def __repr__(self) -> str:
        def hide(v: Optional[str]) -> str:
            return "None" if v is None else "'***'"
        return (f"S3Credentials(access_key_id={self.access_key_id!r}, "
                f"secret_access_key={hide(self.secret_access_key)}, "
                f"session_token={hide(self.session_token)}, region_name={self.region_name!r}, "
                f"endpoint={self.endpoint!r})")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, S3Credentials):
            return NotImplemented
        return all(getattr(self, f) == getattr(other, f) for f in self.__slots__)


def uri_scheme(path: str) -> str:
    """'s3' for 's3://bucket/key', 'file' for a local path or 'file://...'."""
    m = re.match(_SCHEME_RE, path)
    return m.group(1).lower() if m else "file"


def storage_family(path: str) -> str:
    """uri_scheme, with http and https as one ("http"): one backend serves
    both, so one stream may mix them."""
    scheme = uri_scheme(path)
    return "http" if scheme in HTTP_SCHEMES else scheme


def is_http_path(path: str) -> bool:
    return uri_scheme(path) in HTTP_SCHEMES


def redact_url(url: str) -> str:
    """url without its query string, fragment and user information, which
    may hold secrets (a presigned signature): for messages."""
    import urllib.parse
    try:
        u = urllib.parse.urlsplit(url)
    except ValueError:
        return url.split("?", 1)[0].split("#", 1)[0]
    netloc = u.netloc.rsplit("@", 1)[-1]
    return urllib.parse.urlunsplit((u.scheme, netloc, u.path, "", ""))


def read_url_list(path: str) -> List[str]:
    """The URLs of a text file: one per line; blank lines and lines starting
    with "#" are skipped. Each must be an http:// or https:// URL."""
    urls = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if not is_http_path(line):
                raise RunaiStreamerInvalidInputException(
                    f"{path}:{lineno}: {redact_url(line)!r} is not an http:// or https:// URL")
            urls.append(line)
    if not urls:
        raise RunaiStreamerInvalidInputException(f"{path}: no URLs in the file")
    return urls


def url_pull_items(urls: Sequence[str], dst: str) -> List["PullItem"]:
    """What pull_files downloads for file URLs: each URL into dst under its
    path relative to the longest directory all the URLs share (the file name
    alone for one URL), query strings dropped. Sizes are learnt on download
    (0 until then)."""
    import posixpath
    import urllib.parse

    if not urls:
        return []
    parsed = []
    for url in urls:
        if not is_http_path(url):
            raise RunaiStreamerInvalidInputException(
                f"{redact_url(url)!r}: not an http:// or https:// URL")
        u = urllib.parse.urlsplit(url)
        path = urllib.parse.unquote(u.path)
        if not path or path.endswith("/"):
            raise RunaiStreamerInvalidInputException(f"{redact_url(url)}: {NO_HTTP_LISTING}")
        parsed.append((u.scheme + "://" + u.netloc.rsplit("@", 1)[-1], path))
    if len({origin for origin, _ in parsed}) == 1 and len(parsed) > 1:
        common = posixpath.commonpath([posixpath.dirname(p) for _, p in parsed])
    else:
        common = None
    items = []
    seen = {}
    for url, (_, path) in zip(urls, parsed):
        rel = posixpath.relpath(path, common) if common else posixpath.basename(path)
        check_object_key(rel, redact_url(url))
        if rel in seen:
            raise RunaiStreamerInvalidInputException(
                f"{redact_url(url)} and {redact_url(seen[rel])} would both be written to {rel}")
        seen[rel] = url
        items.append(PullItem(url, 0, rel, safe_destination(dst, rel)))
    return items


def is_object_storage_path(path: str) -> bool:
    return uri_scheme(path) != "file"


def is_s3_path(path: str) -> bool:
    return uri_scheme(path) == "s3"


def is_gs_path(path: str) -> bool:
    return uri_scheme(path) == "gs"


def is_azure_path(path: str) -> bool:
    return uri_scheme(path) == "az"


def local_path(path: str) -> str:
    """The file system path of a local path or file:// URI."""
    if path.startswith("file://"):
        return path[len("file://"):]
    return path


def _as_patterns(patterns: Union[None, str, Sequence[str]]) -> Optional[List[str]]:
    if patterns is None:
        return None
    if isinstance(patterns, str):
        return [patterns]
    return list(patterns)


def _matches(rel: str, allow: Optional[List[str]], ignore: Optional[List[str]]) -> bool:
    if allow is not None and not any(fnmatch.fnmatch(rel, p) for p in allow):
        return False
    if ignore and any(fnmatch.fnmatch(rel, p) for p in ignore):
        return False
    return True


def safe_destination(dst: str, rel: str) -> str:
    """dst/rel, refusing any rel that would land outside dst."""
    root = os.path.realpath(dst)
    if os.path.isabs(rel) or rel.startswith(("/", "\\")):
        raise RunaiStreamerInvalidInputException(f"refusing absolute path {rel!r} under {dst}")
    target = os.path.realpath(os.path.join(root, rel))
    if target == root or os.path.commonpath([root, target]) != root:
        raise RunaiStreamerInvalidInputException(
            f"refusing path {rel!r}: it leads outside the destination {dst}"
        )
    return target


def _settings(credentials: Optional[S3Credentials], scheme: Optional[str] = None) -> List[str]:
    from runai_model_streamer.config import backend_settings
    return backend_settings(credentials=credentials, scheme=scheme)


def list_remote(uri: str, recursive: bool,
                 credentials: Optional[S3Credentials],
                 settings: Optional[List[str]] = None) -> List[Tuple[str, int]]:
    """(uri, size) under uri, listed by the native library's backend."""
    from runai_model_streamer import _native
    if settings is None:
        settings = _settings(credentials, uri_scheme(uri))
    return _native.list_objects(uri, recursive, settings=settings)


def check_object_key(rel: str, uri: str) -> None:
    """Refuses an object key (relative to the pulled prefix) that could name
    a file outside the destination, or one that names no file unambiguously:
    absolute keys, "." and ".." segments, empty segments ("a//b"),
    backslashes and NUL bytes."""
    why = None
    if rel.startswith("/"):
        why = "it is absolute"
    elif "\\" in rel:
        why = "it contains a backslash"
    elif "\0" in rel:
        why = "it contains a NUL byte"
    else:
        parts = rel.split("/")
        if any(p == ".." for p in parts):
            why = "it has a '..' segment"
        elif any(p == "." for p in parts):
            why = "it has a '.' segment"
        elif any(p == "" for p in parts):
            why = "it has an empty segment"
    if why is not None:
        raise RunaiStreamerInvalidInputException(
            f"{uri}: refusing to download object key {rel!r}: {why}, so it does not name a "
            "file inside the destination directory; nothing was downloaded"
        )


def _relative_key(prefix: str, uri: str) -> str:
    if not uri.startswith(prefix):
        raise RunaiStreamerError(
            f"{uri}: the listing of {prefix} returned an object outside that prefix"
        )
    return uri[len(prefix):]


# Files downloaded at once by pull_files (each one with parallel ranged reads).
PULL_WORKERS = 8


class PullItem:
    """One object pull_files copies: its URI, size, key relative to the
    prefix and local destination."""

    __slots__ = ("uri", "size", "rel", "path")

    def __init__(self, uri: str, size: int, rel: str, path: str) -> None:
        self.uri, self.size, self.rel, self.path = uri, size, rel, path

    def __repr__(self) -> str:
        return f"PullItem({self.uri!r}, {self.size}, {self.path!r})"


def plan_pull(model_path: str, dst: str, allow_pattern: Union[None, str, Sequence[str]] = None,
              ignore_pattern: Union[None, str, Sequence[str]] = None,
              s3_credentials: Optional[S3Credentials] = None,
              settings: Optional[List[str]] = None) -> List[PullItem]:
    """What pull_files would download from an object storage prefix: the
    objects listed recursively under model_path that pass the filters, each
    with its checked destination under dst. Raises before anything is
    written if a selected key could land outside dst."""
    model_path = os.fspath(model_path)
    dst = os.fspath(dst)
    allow = _as_patterns(allow_pattern)
    ignore = _as_patterns(ignore_pattern)
    prefix = model_path if model_path.endswith("/") else model_path + "/"
    objects = list_remote(prefix, True, s3_credentials, settings)
    items = []
    for uri, size in objects:
        rel = _relative_key(prefix, uri)
        if not rel or rel.endswith("/"):
            continue  # the prefix itself, or a "directory" marker
        if not _matches(rel, allow, ignore):
            continue
        check_object_key(rel, uri)
        items.append(PullItem(uri, int(size), rel, safe_destination(dst, rel)))
    return items


def download_items(items: Sequence[PullItem], dst: str,
                   s3_credentials: Optional[S3Credentials] = None,
                   settings: Optional[List[str]] = None,
                   progress: Optional[Callable[[PullItem], None]] = None,
                   workers: int = PULL_WORKERS) -> None:
    """Downloads items (from plan_pull) in parallel. Each file is written
    under a temporary name and renamed into place when complete. The first
    failure stops the downloads not yet started and is raised."""
    from runai_model_streamer import _native
    from runai_model_streamer.config import StreamerConfig

    if not items:
        return
    config = StreamerConfig.from_env()
    if settings is None:
        settings = _settings(s3_credentials, uri_scheme(items[0].uri))
    os.makedirs(dst, exist_ok=True)

    def fetch(item: PullItem) -> PullItem:
        _native.download(item.uri, item.path, concurrency=config.concurrency,
                         chunk_bytes=config.chunk_bytes, settings=settings)
        return item

    pool = concurrent.futures.ThreadPoolExecutor(
        max_workers=max(1, min(workers, len(items))), thread_name_prefix="model-streamer-pull")
    futures: list = []
    try:
        futures = [pool.submit(fetch, item) for item in items]
        for future in concurrent.futures.as_completed(futures):
            item = future.result()  # the first failure propagates
            if progress is not None:
                progress(item)
    except BaseException:
        for f in futures:
            f.cancel()
        raise
    finally:
        pool.shutdown(wait=True)


def pull_remote(model_path: str, dst: str, allow_pattern: Union[None, str, Sequence[str]] = None,
                ignore_pattern: Union[None, str, Sequence[str]] = None,
                credentials: Optional[S3Credentials] = None) -> None:
    """Copies every object under the object storage prefix model_path that
    passes the filters into dst (see plan_pull and download_items). For
    http(s), model_path is a file's URL (or a list of them): there is no
    listing, so the filters apply to the URLs' relative paths."""
    if not isinstance(model_path, (str, bytes, os.PathLike)):
        urls = [os.fspath(u) for u in model_path]
        pull_urls(urls, dst, allow_pattern, ignore_pattern)
        return
    model_path = os.fspath(model_path)
    if model_path.startswith("hf://"):
        pull_hf(model_path, dst, allow_pattern, ignore_pattern)
        return
    if is_http_path(model_path):
        pull_urls([model_path], dst, allow_pattern, ignore_pattern)
        return
    settings = _settings(credentials, uri_scheme(model_path))
    items = plan_pull(model_path, dst, allow_pattern, ignore_pattern, credentials, settings)
    download_items(items, os.fspath(dst), credentials, settings)


def pull_urls(urls: Sequence[str], dst: str, allow_pattern: Union[None, str, Sequence[str]] = None,
              ignore_pattern: Union[None, str, Sequence[str]] = None,
              progress: Optional[Callable[[PullItem], None]] = None) -> List[PullItem]:
    """Downloads file URLs into dst (see url_pull_items) and returns the
    items, each with its size."""
    dst = os.fspath(dst)
    return _download_urls(url_pull_items(urls, dst), dst, allow_pattern, ignore_pattern, progress)


def hf_pull_items(model_path: str, dst: str) -> List[PullItem]:
    """What pull_files downloads from an hf:// repository or folder: every
    file huggingface_hub lists under it, at its path relative to it."""
    from runai_model_streamer import hf

    items = []
    for rel, url in hf.list_files(model_path):
        check_object_key(rel, model_path)
        items.append(PullItem(url, 0, rel, safe_destination(dst, rel)))
    return items


def pull_hf(model_path: str, dst: str, allow_pattern: Union[None, str, Sequence[str]] = None,
            ignore_pattern: Union[None, str, Sequence[str]] = None,
            progress: Optional[Callable[[PullItem], None]] = None) -> List[PullItem]:
    """Downloads an hf:// repository, folder or file into dst."""
    from runai_model_streamer import hf

    dst = os.fspath(dst)
    _, _, inner = hf.parse(model_path)
    if inner and not inner.endswith("/"):
        return pull_urls([hf.resolve(model_path)], dst, allow_pattern, ignore_pattern, progress)
    return _download_urls(hf_pull_items(model_path, dst), dst, allow_pattern, ignore_pattern, progress)


def _download_urls(items: List[PullItem], dst: str, allow_pattern, ignore_pattern,
                   progress: Optional[Callable[[PullItem], None]]) -> List[PullItem]:
    allow = _as_patterns(allow_pattern)
    ignore = _as_patterns(ignore_pattern)
    items = [i for i in items if _matches(i.rel, allow, ignore)]

    def done(item: PullItem) -> None:
        item.size = os.path.getsize(item.path)
        if progress is not None:
            progress(item)

    download_items(items, dst, settings=_settings(None, "https"), progress=done)
    return items


def list_safetensors(path: str, s3_credentials: Optional[S3Credentials] = None) -> List[str]:
    """The *.safetensors files directly in ``path`` (not recursive), sorted,
    as full paths (full URIs for object storage)."""
    path = os.fspath(path)
    if path.startswith("hf://"):
        from runai_model_streamer import hf
        return [url for rel, url in hf.list_files(path)
                if "/" not in rel and fnmatch.fnmatch(rel, SAFETENSORS_PATTERN)]
    if is_http_path(path):
        raise RunaiStreamerInvalidInputException(f"{redact_url(path)}: {NO_HTTP_LISTING}")
    if is_object_storage_path(path):
        objects = list_remote(path, False, s3_credentials)
        return sorted(uri for uri, _ in objects
                      if fnmatch.fnmatch(uri.rstrip("/").rsplit("/", 1)[-1], SAFETENSORS_PATTERN)
                      and not uri.endswith("/"))
    directory = local_path(path)
    if not os.path.exists(directory):
        raise RunaiStreamerFileNotFoundError(f"{path}: no such directory")
    if not os.path.isdir(directory):
        raise RunaiStreamerInvalidInputException(f"{path}: not a directory")
    names = sorted(
        e.name for e in os.scandir(directory)
        if fnmatch.fnmatch(e.name, SAFETENSORS_PATTERN) and e.is_file()
    )
    return [os.path.join(path, n) for n in names]


def _walk_files(root: str) -> Iterable[str]:
    """Relative paths ('/'-separated) of the files under root, sorted."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in filenames:
            full = os.path.join(dirpath, name)
            if os.path.isfile(full):
                out.append(os.path.relpath(full, root).replace(os.sep, "/"))
    return sorted(out)


def pull_files(
    model_path: str,
    dst: str,
    allow_pattern: Optional[List[str]] = None,
    ignore_pattern: Optional[List[str]] = None,
    s3_credentials: Optional[S3Credentials] = None,
) -> None:
    """Copies the files under ``model_path`` (a local directory or an object
    storage prefix, recursively) into ``dst``, keeping relative paths.
    ``allow_pattern`` / ``ignore_pattern``: fnmatch patterns matched against
    the path relative to model_path. Nothing is written outside ``dst``.

    For http(s) there is no listing: ``model_path`` is a file's URL, or a
    list of URLs, each downloaded under its path relative to the directory
    they share."""
    dst = os.fspath(dst)
    allow = _as_patterns(allow_pattern)
    ignore = _as_patterns(ignore_pattern)
    if not isinstance(model_path, (str, bytes, os.PathLike)):  # a list of URLs
        pull_remote(model_path, dst, allow, ignore, s3_credentials)
        return
    model_path = os.fspath(model_path)
    if is_object_storage_path(model_path):
        pull_remote(model_path, dst, allow, ignore, s3_credentials)
        return
    src_root = local_path(model_path)
    if not os.path.isdir(src_root):
        raise RunaiStreamerFileNotFoundError(f"{model_path}: no such directory")
    os.makedirs(dst, exist_ok=True)
    for rel in _walk_files(src_root):
        if not _matches(rel, allow, ignore):
            continue
        src = os.path.join(src_root, *rel.split("/"))
        target = safe_destination(dst, rel)
        if os.path.exists(target) and os.path.samefile(src, target):
            continue
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(src, target)
        shutil.copymode(src, target)
