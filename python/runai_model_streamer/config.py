"""Settings, read from the environment when a stream starts (never at import).

  RUNAI_STREAMER_CONCURRENCY     reads in flight (unset: the storage backend's
                                 own default: 16 for local files, 32 for
                                 S3, GCS and Azure)
  RUNAI_STREAMER_MEMORY_LIMIT    -1: whole request (default), 0: the largest
                                 tensor, N: N bytes
  RUNAI_STREAMER_CHUNK_BYTESIZE  bytes per read (unset: the backend's default:
                                 8 MiB for local files, 16 MiB for S3, GCS
                                 and Azure)
  MODEL_STREAMER_READ_MODE       auto (default) | buffered | direct | mmap |
                                 auto-read. auto decides per file: a cached
                                 file is mapped (zero copy) when the tensors
                                 stay on the CPU, and read into the pinned
                                 buffer (auto-read) when they go on to a CUDA
                                 device; an uncached file is read O_DIRECT.

Storage backend settings (endpoints, credentials, ...) are every variable
whose name starts with one of SETTING_PREFIXES, read at each call and handed
to the native library, which never reads the environment itself; see
backend_settings().
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Mapping, NamedTuple, Optional

from runai_model_streamer.exceptions import RunaiStreamerInvalidInputException

CONCURRENCY_ENV = "RUNAI_STREAMER_CONCURRENCY"
MEMORY_LIMIT_ENV = "RUNAI_STREAMER_MEMORY_LIMIT"
CHUNK_BYTESIZE_ENV = "RUNAI_STREAMER_CHUNK_BYTESIZE"
READ_MODE_ENV = "MODEL_STREAMER_READ_MODE"

# 0 (unset) lets each storage backend use its own tuned default.
DEFAULT_CONCURRENCY = 0
DEFAULT_MEMORY_LIMIT = -1
# The library's MS_READ_* codes.
READ_MODES = {"auto": 0, "buffered": 1, "direct": 2, "mmap": 3, "auto-read": 4}

_SUFFIXES = {
    "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}


def parse_size(text: str, name: str) -> int:
    """An integer byte count: "4000000000", "4e9", "4G", "512MiB", "-1"."""
    s = str(text).strip().replace("_", "")
    if not s:
        raise RunaiStreamerInvalidInputException(f"{name} is empty; expected an integer")
    lowered = s.lower()
    multiplier = 1
    for suffix in sorted(_SUFFIXES, key=len, reverse=True):
        if lowered.endswith(suffix) and lowered[: -len(suffix)].strip():
            multiplier = _SUFFIXES[suffix]
            lowered = lowered[: -len(suffix)].strip()
            break
    try:
        value = int(lowered)
    except ValueError:
        try:
            f = float(lowered)
        except ValueError:
            raise RunaiStreamerInvalidInputException(
                f"{name}={text!r} is not a number of bytes"
            ) from None
        if f != f or f in (float("inf"), float("-inf")) or f * multiplier != int(f * multiplier):
            raise RunaiStreamerInvalidInputException(
                f"{name}={text!r} is not a whole number of bytes"
            )
        return int(f * multiplier)
    return value * multiplier


def parse_int(text: str, name: str) -> int:
    try:
        return int(str(text).strip())
    except ValueError:
        raise RunaiStreamerInvalidInputException(f"{name}={text!r} is not an integer") from None


# A NamedTuple rather than a frozen dataclass: this module is imported with
# the streamer, and making the dataclass took 0.46 ms of that import here.
class StreamerConfig(NamedTuple):
    concurrency: int = DEFAULT_CONCURRENCY  # 0: the backend's default
    memory_limit: int = DEFAULT_MEMORY_LIMIT
    chunk_bytes: int = 0  # 0: the library's default
    read_mode: str = "auto"

    @property
    def read_mode_code(self) -> int:
        return READ_MODES[self.read_mode]

    def read_mode_for(self, device_type: str) -> str:
        """The read mode for tensors bound for `device_type`. A CUDA consumer
        copies every byte from a pinned buffer: a zero-copy mapping of a cached
        file would make that copy stage through pageable memory, so auto never
        maps there."""
        if self.read_mode == "auto" and device_type == "cuda":
            return "auto-read"
        return self.read_mode

    @classmethod
    def from_env(cls, env: Optional[Mapping[str, str]] = None) -> "StreamerConfig":
        env = os.environ if env is None else env

        concurrency = DEFAULT_CONCURRENCY
        raw = env.get(CONCURRENCY_ENV, "").strip()
        if raw:
            concurrency = parse_int(raw, CONCURRENCY_ENV)
            if concurrency < 1:
                raise RunaiStreamerInvalidInputException(
                    f"{CONCURRENCY_ENV}={raw!r}: must be at least 1"
                )

        memory_limit = DEFAULT_MEMORY_LIMIT
        raw = env.get(MEMORY_LIMIT_ENV, "").strip()
        if raw:
            memory_limit = parse_size(raw, MEMORY_LIMIT_ENV)
            if memory_limit < -1:
                raise RunaiStreamerInvalidInputException(
                    f"{MEMORY_LIMIT_ENV}={raw!r}: must be -1 (unlimited), 0 (the largest "
                    "tensor) or a positive number of bytes"
                )

        chunk_bytes = 0
        raw = env.get(CHUNK_BYTESIZE_ENV, "").strip()
        if raw:
            chunk_bytes = parse_size(raw, CHUNK_BYTESIZE_ENV)
            if chunk_bytes < 1:
                raise RunaiStreamerInvalidInputException(
                    f"{CHUNK_BYTESIZE_ENV}={raw!r}: must be a positive number of bytes"
                )

        read_mode = "auto"
        raw = env.get(READ_MODE_ENV, "").strip().lower()
        if raw:
            if raw not in READ_MODES:
                raise RunaiStreamerInvalidInputException(
                    f"{READ_MODE_ENV}={raw!r}: expected one of {', '.join(READ_MODES)}"
                )
            read_mode = raw

        return cls(concurrency, memory_limit, chunk_bytes, read_mode)


# Environment variables handed to the storage backends (the native library
# never reads the environment itself), as go/storage.SettingPrefixes.
# CLOUD_STORAGE_ (CLOUD_STORAGE_EMULATOR_ENDPOINT, ..._TESTBENCH_ENDPOINT)
# and API_ENDPOINT_OVERRIDE are the GCS endpoint variables of google-cloud-cpp
# and of the Python SDK, which the reference honours. HF_TOKEN, HF_ENDPOINT,
# SSL_CERT_FILE and SSL_CERT_DIR are the http(s) backend's: the Hub token
# (sent to the Hub's hosts only) and the roots the Go runtime would read from
# the environment it started with, which this process may have changed since.
SETTING_PREFIXES = ("AWS_", "RUNAI_STREAMER_", "AZURE_", "GOOGLE_", "GCS_",
                    "STORAGE_EMULATOR_HOST", "MODEL_STREAMER_", "CLOUD_STORAGE_",
                    "API_ENDPOINT_OVERRIDE", "HF_TOKEN", "HF_ENDPOINT", "SSL_CERT_FILE",
                    "SSL_CERT_DIR")

NO_BOTO3_SESSION_ENV = "RUNAI_STREAMER_NO_BOTO3_SESSION"
S3_UNSIGNED_ENV = "RUNAI_STREAMER_S3_UNSIGNED"
# The values the library reads as true (go/storage.Settings.Bool).
_TRUE = ("1", "true", "yes", "on")

# S3Credentials attribute -> the setting it overrides.
CREDENTIAL_SETTINGS = (
    ("access_key_id", "AWS_ACCESS_KEY_ID"),
    ("secret_access_key", "AWS_SECRET_ACCESS_KEY"),
    ("session_token", "AWS_SESSION_TOKEN"),
    ("region_name", "AWS_REGION"),
    ("endpoint", "AWS_ENDPOINT_URL"),
)


def use_boto3_session(env: Optional[Mapping[str, str]] = None) -> bool:
    """RUNAI_STREAMER_NO_BOTO3_SESSION unset or "0" (the documented default)."""
    env = os.environ if env is None else env
    return env.get(NO_BOTO3_SESSION_ENV, "").strip() in ("", "0")


def s3_unsigned(env: Optional[Mapping[str, str]] = None) -> bool:
    """RUNAI_STREAMER_S3_UNSIGNED=1 (or true): anonymous, unsigned S3
    requests; no credentials are resolved at all."""
    env = os.environ if env is None else env
    return env.get(S3_UNSIGNED_ENV, "").strip().lower() in _TRUE


def boto3_settings(env: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """Credentials (and region, CA bundle) as a boto3 session resolves them:
    {} when boto3 is not installed or finds no credentials.

    The session runs boto3's whole chain (environment, AWS_PROFILE and the
    shared files, SSO, credential_process, container and instance roles), so
    the library receives plain, frozen keys. Like every AWS SDK, the chain
    ends with the EC2 instance metadata service unless
    AWS_EC2_METADATA_DISABLED=true.
    """
    try:
        import boto3  # noqa: PLC0415 - optional dependency (extra "s3")
        import botocore.session  # noqa: PLC0415
    except ImportError:
        return {}
    env = os.environ if env is None else env
    try:
        core = botocore.session.Session()
        session = boto3.Session(botocore_session=core)
        credentials = session.get_credentials()
        frozen = credentials.get_frozen_credentials() if credentials is not None else None
        region = session.region_name
        ca_bundle = core.get_config_variable("ca_bundle")
    except Exception as e:  # botocore's own errors: bad profile, SSO expired, ...
        from runai_model_streamer.exceptions import RunaiStreamerPermissionError
        raise RunaiStreamerPermissionError(
            f"boto3 could not resolve AWS credentials: {type(e).__name__}: {e} "
            f"(set {NO_BOTO3_SESSION_ENV}=1 to let the library resolve them itself)"
        ) from e
    out: Dict[str, str] = {}
    if frozen is not None and frozen.access_key and frozen.secret_key:
        out["AWS_ACCESS_KEY_ID"] = frozen.access_key
        out["AWS_SECRET_ACCESS_KEY"] = frozen.secret_key
        # An empty token removes a stale AWS_SESSION_TOKEN (see backend_settings).
        out["AWS_SESSION_TOKEN"] = frozen.token or ""
    if region:
        out["AWS_REGION"] = region
    if ca_bundle:
        out["AWS_CA_BUNDLE"] = str(ca_bundle)
    return out


def backend_settings(env: Optional[Mapping[str, str]] = None,
                     credentials: Any = None, scheme: Optional[str] = None) -> List[str]:
    """"NAME=VALUE" settings for the native library, in order of precedence:

    1. explicit S3Credentials (access_key_id -> AWS_ACCESS_KEY_ID,
       secret_access_key -> AWS_SECRET_ACCESS_KEY, session_token ->
       AWS_SESSION_TOKEN, region_name -> AWS_REGION, endpoint ->
       AWS_ENDPOINT_URL);
    2. for s3:// only, when no explicit keys are given,
       RUNAI_STREAMER_NO_BOTO3_SESSION is unset or "0" and
       RUNAI_STREAMER_S3_UNSIGNED is not set (unsigned requests need no
       credentials, so no session is created): the credentials a boto3
       session resolves (if boto3 is installed), plus its region and CA
       bundle where the environment names none;
    3. every variable of the environment (read now) whose name starts with
       one of SETTING_PREFIXES.
    """
    env = os.environ if env is None else env
    values: Dict[str, str] = {k: v for k, v in env.items() if k.startswith(SETTING_PREFIXES)}
    explicit = {}
    if credentials is not None:
        for attr, name in CREDENTIAL_SETTINGS:
            value = getattr(credentials, attr, None)
            if value:
                explicit[name] = str(value)

    if (scheme == "s3" and "AWS_ACCESS_KEY_ID" not in explicit and use_boto3_session(env)
            and not s3_unsigned(env)):
        resolved = boto3_settings(env)
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
            if name in resolved:
                values[name] = resolved[name]
        for name in ("AWS_REGION", "AWS_CA_BUNDLE"):
            if name in resolved and not values.get(name) and not (
                    name == "AWS_REGION" and values.get("AWS_DEFAULT_REGION")):
                values[name] = resolved[name]

    if "AWS_ACCESS_KEY_ID" in explicit:
        # Keys from different sources must not be paired: explicit keys
        # come with their own token or none.
        values["AWS_SESSION_TOKEN"] = ""
    if "AWS_ENDPOINT_URL" in explicit:
        values.pop("AWS_ENDPOINT_URL_S3", None)  # would win over AWS_ENDPOINT_URL
    values.update(explicit)
    return [f"{k}={v}" for k, v in sorted(values.items()) if v != "" or k not in _DROP_EMPTY]


# Settings whose empty value means "unset"; left out rather than passed empty.
_DROP_EMPTY = frozenset({"AWS_SESSION_TOKEN"})
