"""Start real object-storage servers on 127.0.0.1 for the Python tests.

The Python twin of go/internal/testserver, standard library only. The
servers are the ones ci/install-servers.sh installs into <repo>/.tools (or
$MODEL_STREAMER_TOOLS):

    start_minio(tmp_dir)     MinIO (S3 API)
    start_fake_gcs(tmp_dir)  fake-gcs-server (GCS JSON API, plain HTTP)
    start_azurite(tmp_dir)   Azurite blob service (Azure Blob API)
    start_nginx(tmp_dir)     nginx serving files over http and https

Each binds 127.0.0.1 only, on free ports, keeps its data under tmp_dir,
turns update checks, consoles and telemetry off, returns once the server
answers its health endpoint (bounded wait), and returns a dict whose "stop"
callable stops it (SIGTERM to its process group, SIGKILL after a grace
period; safe to call twice). Servers still running when the interpreter
exits are stopped then, and on Linux the kernel kills a server whose parent
dies. A session-scoped fixture might read:

    @pytest.fixture(scope="session")
    def minio(tmp_path_factory):
        srv = servers.start_minio(tmp_path_factory.mktemp("minio"))
        yield srv
        srv["stop"]()

When a server is not installed the starters call pytest.skip (naming the
install command), or raise ServerNotInstalled when
MODEL_STREAMER_REQUIRE_SERVERS=1 (as CI sets) or pytest is not importable.

The module also has minimal clients for setting up test data without SDKs:
minio_create_bucket / minio_put_object / minio_set_bucket_policy /
minio_allow_anonymous_read (AWS SigV4), gcs_create_bucket /
gcs_put_object, azurite_create_container / azurite_put_blob (Shared Key).
"""

from __future__ import annotations

import atexit
import base64
import datetime
import hashlib
import hmac
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

__all__ = [
    "ServerNotInstalled",
    "ServerStartError",
    "tools_dir",
    "start_minio",
    "start_fake_gcs",
    "start_azurite",
    "minio_create_bucket",
    "minio_put_object",
    "minio_set_bucket_policy",
    "minio_allow_anonymous_read",
    "gcs_create_bucket",
    "gcs_put_object",
    "azurite_create_container",
    "azurite_put_blob",
    "start_nginx",
    "nginx_put",
    "nginx_put_hub",
    "AZURITE_ACCOUNT_NAME",
    "AZURITE_ACCOUNT_KEY",
]

ENV_TOOLS = "MODEL_STREAMER_TOOLS"
ENV_REQUIRE = "MODEL_STREAMER_REQUIRE_SERVERS"
INSTALL_COMMAND = "ci/install-servers.sh"

READY_TIMEOUT = 60.0  # seconds a server may take to become healthy
STOP_GRACE = 5.0  # seconds between SIGTERM and SIGKILL
START_ATTEMPTS = 3  # retries when a port was taken between probe and bind

MINIO_ACCESS_KEY = "model-streamer"
MINIO_SECRET_KEY = "model-streamer-secret"
MINIO_REGION = "us-east-1"

# The Azure Storage emulator's documented development account; the key is
# public and only ever valid against an emulator.
AZURITE_ACCOUNT_NAME = "devstoreaccount1"
AZURITE_ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
AZURITE_API_VERSION = "2021-12-02"


class ServerNotInstalled(RuntimeError):
    """A server binary is missing: run ci/install-servers.sh."""


class ServerStartError(RuntimeError):
    """A server was installed but did not start."""


# ---------------------------------------------------------------------------
# Locating the tools


def _repo_root() -> Optional[Path]:
    """The nearest directory above this file holding go/ and Makefile."""
    for d in Path(__file__).resolve().parents:
        if (d / "go").is_dir() and (d / "Makefile").is_file():
            return d
    return None


def tools_dir() -> Path:
    """$MODEL_STREAMER_TOOLS, or <repo root>/.tools."""
    env = os.environ.get(ENV_TOOLS)
    if env:
        return Path(env)
    root = _repo_root()
    if root is None:
        raise ServerNotInstalled("cannot find the repository root (a directory with go/ and Makefile)")
    return root / ".tools"


def _require_servers() -> bool:
    return os.environ.get(ENV_REQUIRE, "").strip().lower() in ("1", "true", "yes", "on")


def _missing(what: str, path: str) -> None:
    msg = f"{what} not installed ({path} missing): run {INSTALL_COMMAND} from the repository root"
    if _require_servers():
        raise ServerNotInstalled(f"{msg} ({ENV_REQUIRE}=1)")
    try:
        import pytest  # noqa: PLC0415 - only when skipping
    except ImportError:
        raise ServerNotInstalled(msg) from None
    pytest.skip(msg)


def _tool(what: str, *rel: str) -> Path:
    path = tools_dir().joinpath(*rel)
    if not path.exists():
        _missing(what, str(path))
    return path


# ---------------------------------------------------------------------------
# Processes


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _clean_env(extra: Dict[str, str]) -> Dict[str, str]:
    """This process's environment without server settings or proxies."""
    env = {}
    for k, v in os.environ.items():
        u = k.upper()
        if u.startswith(("MINIO_", "AWS_", "FAKE_GCS_", "AZURITE_", "NODE_OPTIONS")):
            continue
        if u in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
            continue
        env[k] = v
    env.update(extra)
    return env


def _pdeathsig() -> None:
    """In the child: ask Linux for SIGKILL when the parent thread dies."""
    try:
        import ctypes  # noqa: PLC0415

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except Exception:  # noqa: BLE001 - best effort, never fail the exec
        pass


_running: List["_Process"] = []
_running_lock = threading.Lock()


class _Process:
    def __init__(self, name: str, argv: Sequence[str], env: Dict[str, str], cwd: Path, log: Path):
        self.name = name
        self.log_path = log
        self._log = open(log, "wb")
        self._lock = threading.Lock()
        self._stopped = False
        self.popen = subprocess.Popen(
            list(argv),
            cwd=str(cwd),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: stop reaches its children
            preexec_fn=_pdeathsig if sys.platform.startswith("linux") else None,
            close_fds=True,
        )
        with _running_lock:
            _running.append(self)

    def output(self, limit: int = 64 << 10) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        if len(data) > limit:
            data = b"[...]\n" + data[-limit:]
        return data.decode("utf-8", "replace")

    def exited(self) -> bool:
        return self.popen.poll() is not None

    def stop(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            try:
                if self.popen.poll() is None:
                    self._signal(signal.SIGTERM)
                    try:
                        self.popen.wait(STOP_GRACE)
                    except subprocess.TimeoutExpired:
                        self._signal(signal.SIGKILL)
                        self.popen.wait(STOP_GRACE)
                self._signal(signal.SIGKILL)  # anything left in the group
            finally:
                self._log.close()
                with _running_lock:
                    if self in _running:
                        _running.remove(self)

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self.popen.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


@atexit.register
def _stop_all() -> None:
    with _running_lock:
        procs = list(_running)
    for p in procs:
        p.stop()


def _http_status(url: str, timeout: float = 2.0, headers: Optional[Dict[str, str]] = None) -> Optional[int]:
    """The status of GET url on a loopback server, None if unreachable."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(urllib.request.Request(url, headers=headers or {}), timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code
    except (OSError, ValueError):
        return None


def _start(
    name: str,
    tmp_dir,
    nports: int,
    command: Callable[[List[int], Path], Tuple[List[str], Dict[str, str]]],
    ready: Callable[[List[int]], bool],
) -> Tuple[_Process, List[int]]:
    base = Path(tmp_dir)
    base.mkdir(parents=True, exist_ok=True)
    last = ""
    for attempt in range(1, START_ATTEMPTS + 1):
        ports = [free_port() for _ in range(nports)]
        work = base / f"{name}-{ports[0]}"
        work.mkdir(parents=True, exist_ok=True)
        argv, env = command(ports, work)
        began = time.monotonic()
        proc = _Process(name, argv, _clean_env(env), work, work / "server.log")
        deadline = began + READY_TIMEOUT
        wait = 0.01
        why = f"not ready after {READY_TIMEOUT:.0f} s"
        while True:
            if proc.exited():
                why = f"exited with status {proc.popen.returncode} before it was ready"
                break
            if ready(ports):
                proc.startup_seconds = time.monotonic() - began
                return proc, ports
            if time.monotonic() > deadline:
                break
            time.sleep(wait)
            wait = min(wait * 2, 0.2)
        out = proc.output()
        proc.stop()
        last = f"{name} did not start: {why}\n{name} output:\n{out}"
        # Go's net error (fake-gcs-server), MinIO's own message, Node's code.
        if not any(m in out for m in ("address already in use", "port is already in use", "EADDRINUSE")):
            break
    raise ServerStartError(last)


def _hostport(port: int) -> str:
    return f"127.0.0.1:{port}"


# ---------------------------------------------------------------------------
# MinIO


def start_minio(tmp_dir) -> dict:
    """Start MinIO with its data under tmp_dir.

    Returns dict(endpoint="http://127.0.0.1:PORT", access_key, secret_key,
    region="us-east-1", stop=callable, log=Path, pid). Path-style addressing;
    no buckets exist yet.
    """
    binary = _tool("MinIO", "bin", "minio")

    def command(ports, work):
        argv = [
            str(binary), "server", "--quiet", "--anonymous",
            "--address", _hostport(ports[0]),
            "--console-address", _hostport(ports[1]),
            "--certs-dir", str(work / "certs"),
            str(work / "data"),
        ]
        env = {
            "MINIO_ROOT_USER": MINIO_ACCESS_KEY,
            "MINIO_ROOT_PASSWORD": MINIO_SECRET_KEY,
            "MINIO_SITE_REGION": MINIO_REGION,
            "MINIO_UPDATE": "off",
            "MINIO_BROWSER": "off",
            "MINIO_CALLHOME_ENABLE": "off",
            "MINIO_API_REQUESTS_DEADLINE": "30s",
            "HOME": str(work),
        }
        return argv, env

    def ready(ports):
        # /minio/health/ready answers 200 before the object layer is up
        # (requests then fail with XMinioServerNotInitialized): wait for a
        # signed ListBuckets to succeed as well.
        base = f"http://{_hostport(ports[0])}"
        if _http_status(base + "/minio/health/ready") != 200:
            return False
        h = _sigv4_headers("GET", base + "/", b"", {}, MINIO_ACCESS_KEY, MINIO_SECRET_KEY, MINIO_REGION)
        return _http_status(base + "/", headers=h) == 200

    proc, ports = _start("minio", tmp_dir, 2, command, ready)
    return {
        "endpoint": f"http://{_hostport(ports[0])}",
        "access_key": MINIO_ACCESS_KEY,
        "secret_key": MINIO_SECRET_KEY,
        "region": MINIO_REGION,
        "stop": proc.stop,
        "log": proc.log_path,
        "startup_seconds": proc.startup_seconds,
        "pid": proc.popen.pid,
    }


def _sigv4_headers(method: str, url: str, body: bytes, headers: Dict[str, str],
                   access_key: str, secret_key: str, region: str) -> Dict[str, str]:
    """Headers signing a request with AWS Signature Version 4 (service s3)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    day = now.strftime("%Y%m%d")
    u = urllib.parse.urlsplit(url)
    payload = hashlib.sha256(body).hexdigest()
    hdrs = dict(headers)
    hdrs["x-amz-date"] = amz_date
    hdrs["x-amz-content-sha256"] = payload
    canon_h = {"host": u.netloc}
    for k, v in hdrs.items():
        lk = k.lower()
        if lk.startswith("x-amz-") or lk in ("content-type", "content-md5", "range"):
            canon_h[lk] = " ".join(str(v).split())
    names = sorted(canon_h)
    q = urllib.parse.parse_qsl(u.query, keep_blank_values=True)
    canon_q = "&".join(
        f"{urllib.parse.quote(k, safe='-_.~')}={urllib.parse.quote(v, safe='-_.~')}" for k, v in sorted(q)
    )
    path = "/".join(urllib.parse.quote(urllib.parse.unquote(s), safe="-_.~") for s in (u.path or "/").split("/"))
    canonical = "\n".join([
        method, path, canon_q,
        "".join(f"{k}:{canon_h[k]}\n" for k in names),
        ";".join(names), payload,
    ])
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])

    def mac(key: bytes, msg: str) -> bytes:
        return hmac.new(key, msg.encode(), hashlib.sha256).digest()

    key = mac(mac(mac(mac(("AWS4" + secret_key).encode(), day), region), "s3"), "aws4_request")
    sig = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    hdrs["Authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, SignedHeaders={';'.join(names)}, Signature={sig}"
    )
    return hdrs


def _request(method: str, url: str, body: bytes, headers: Dict[str, str], want: Sequence[int]) -> bytes:
    headers = dict(headers)
    if not body:
        # urllib would add a form Content-Type to an empty body, which
        # signatures do not cover.
        body = None
        if method in ("PUT", "POST"):
            headers["Content-Length"] = "0"
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=60) as resp:
            status, data = resp.status, resp.read()
    except urllib.error.HTTPError as e:
        status, data = e.code, e.read()
    if status not in want:
        raise RuntimeError(f"{method} {url}: HTTP {status}: {data[:2000]!r}")
    return data


def _key_path(*parts: str) -> str:
    return "/" + "/".join(urllib.parse.quote(p, safe="/-_.~") for p in parts)


def minio_create_bucket(server: dict, bucket: str) -> None:
    """Create bucket on a start_minio server."""
    url = server["endpoint"] + _key_path(bucket)
    h = _sigv4_headers("PUT", url, b"", {}, server["access_key"], server["secret_key"], server["region"])
    _request("PUT", url, b"", h, (200,))


def minio_put_object(server: dict, bucket: str, key: str, data: bytes) -> str:
    """Store data as bucket/key on a start_minio server; returns s3://bucket/key."""
    url = server["endpoint"] + _key_path(bucket, key)
    h = _sigv4_headers("PUT", url, data, {"Content-Type": "application/octet-stream"},
                       server["access_key"], server["secret_key"], server["region"])
    _request("PUT", url, data, h, (200,))
    return f"s3://{bucket}/{key}"


def minio_set_bucket_policy(server: dict, bucket: str, policy: str) -> None:
    """Set bucket's access policy (a JSON policy document, PutBucketPolicy)
    on a start_minio server."""
    url = server["endpoint"] + _key_path(bucket) + "?policy="
    body = policy.encode()
    h = _sigv4_headers("PUT", url, body, {}, server["access_key"], server["secret_key"],
                       server["region"])
    _request("PUT", url, body, h, (204,))


def minio_allow_anonymous_read(server: dict, bucket: str) -> None:
    """Let requests without credentials read bucket's objects and list it
    (the policy `mc anonymous set download` sets)."""
    arn = f"arn:aws:s3:::{bucket}"
    policy = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": ["*"]},
         "Action": ["s3:GetBucketLocation", "s3:ListBucket"], "Resource": [arn]},
        {"Effect": "Allow", "Principal": {"AWS": ["*"]},
         "Action": ["s3:GetObject"], "Resource": [arn + "/*"]},
    ]}
    minio_set_bucket_policy(server, bucket, json.dumps(policy))


# ---------------------------------------------------------------------------
# fake-gcs-server


def start_fake_gcs(tmp_dir) -> dict:
    """Start fake-gcs-server (plain HTTP, filesystem backend under tmp_dir).

    Returns dict(endpoint="http://127.0.0.1:PORT/storage/v1/",
    host="127.0.0.1:PORT" (e.g. for STORAGE_EMULATOR_HOST), stop=callable,
    log=Path). No buckets exist yet.
    """
    binary = _tool("fake-gcs-server", "bin", "fake-gcs-server")

    def command(ports, work):
        argv = [
            str(binary), "-scheme", "http", "-host", "127.0.0.1", "-port", str(ports[0]),
            "-public-host", "127.0.0.1", "-external-url", f"http://{_hostport(ports[0])}",
            "-backend", "filesystem", "-filesystem-root", str(work / "storage"),
            "-log-level", "warn",
        ]
        return argv, {}

    proc, ports = _start(
        "fake-gcs-server", tmp_dir, 1, command,
        lambda ports: _http_status(f"http://{_hostport(ports[0])}/_internal/healthcheck") == 200,
    )
    host = _hostport(ports[0])
    return {
        "endpoint": f"http://{host}/storage/v1/",
        "host": host,
        "stop": proc.stop,
        "log": proc.log_path,
        "startup_seconds": proc.startup_seconds,
    }


def gcs_create_bucket(server: dict, bucket: str) -> None:
    """Create bucket on a start_fake_gcs server."""
    body = json.dumps({"name": bucket}).encode()
    _request("POST", f"http://{server['host']}/storage/v1/b?project=test", body,
             {"Content-Type": "application/json"}, (200,))


def gcs_put_object(server: dict, bucket: str, name: str, data: bytes) -> str:
    """Store data as bucket/name on a start_fake_gcs server; returns gs://bucket/name."""
    q = urllib.parse.urlencode({"uploadType": "media", "name": name})
    url = f"http://{server['host']}/upload/storage/v1/b/{urllib.parse.quote(bucket, safe='')}/o?{q}"
    _request("POST", url, data, {"Content-Type": "application/octet-stream"}, (200,))
    return f"gs://{bucket}/{name}"


# ---------------------------------------------------------------------------
# Azurite


def start_azurite(tmp_dir) -> dict:
    """Start Azurite's blob service (in-memory, telemetry off, any API version).

    Returns dict(blob_endpoint="http://127.0.0.1:PORT/devstoreaccount1",
    account_name, account_key, connection_string, stop=callable, log=Path).
    Needs node on PATH. No containers exist yet.
    """
    main = _tool("Azurite", "azurite", "node_modules", "azurite", "dist", "src", "blob", "main.js")
    node = shutil.which("node")
    if node is None:
        _missing("Node.js (for Azurite)", "node on PATH")

    def command(ports, work):
        argv = [
            node, str(main), "--blobHost", "127.0.0.1", "--blobPort", str(ports[0]),
            "--inMemoryPersistence", "--skipApiVersionCheck", "--disableTelemetry",
            "--disableProductStyleUrl", "--silent",
        ]
        return argv, {}

    proc, ports = _start(
        "azurite-blob", tmp_dir, 1, command,
        # Any HTTP answer (an unauthenticated request is refused) means it listens.
        lambda ports: _http_status(f"http://{_hostport(ports[0])}/{AZURITE_ACCOUNT_NAME}?comp=list") is not None,
    )
    ep = f"http://{_hostport(ports[0])}/{AZURITE_ACCOUNT_NAME}"
    return {
        "blob_endpoint": ep,
        "account_name": AZURITE_ACCOUNT_NAME,
        "account_key": AZURITE_ACCOUNT_KEY,
        "connection_string": (
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT_NAME};"
            f"AccountKey={AZURITE_ACCOUNT_KEY};BlobEndpoint={ep};"
        ),
        "stop": proc.stop,
        "log": proc.log_path,
        "startup_seconds": proc.startup_seconds,
    }


def _shared_key_headers(method: str, url: str, body: bytes, headers: Dict[str, str],
                        account: str, key: str) -> Dict[str, str]:
    """Headers signing a Blob request with Shared Key authorization."""
    hdrs = dict(headers)
    hdrs["x-ms-date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%a, %d %b %Y %H:%M:%S GMT")
    hdrs.setdefault("x-ms-version", AZURITE_API_VERSION)
    low = {k.lower(): str(v) for k, v in hdrs.items()}
    u = urllib.parse.urlsplit(url)
    lines = [method]
    for h in ("content-encoding", "content-language"):
        lines.append(low.get(h, ""))
    lines.append(str(len(body)) if body else "")
    for h in ("content-md5", "content-type"):
        lines.append(low.get(h, ""))
    lines.append("")  # Date: x-ms-date is used instead
    for h in ("if-modified-since", "if-match", "if-none-match", "if-unmodified-since", "range"):
        lines.append(low.get(h, ""))
    s = "\n".join(lines) + "\n"
    s += "".join(f"{k}:{low[k].strip()}\n" for k in sorted(k for k in low if k.startswith("x-ms-")))
    s += f"/{account}{u.path}"
    q: Dict[str, List[str]] = {}
    for k, v in urllib.parse.parse_qsl(u.query, keep_blank_values=True):
        q.setdefault(k.lower(), []).append(v)
    for k in sorted(q):
        s += f"\n{k}:{','.join(sorted(q[k]))}"
    sig = base64.b64encode(hmac.new(base64.b64decode(key), s.encode(), hashlib.sha256).digest()).decode()
    hdrs["Authorization"] = f"SharedKey {account}:{sig}"
    return hdrs


def azurite_create_container(server: dict, container: str) -> None:
    """Create container on a start_azurite server."""
    url = server["blob_endpoint"] + _key_path(container) + "?restype=container"
    h = _shared_key_headers("PUT", url, b"", {}, server["account_name"], server["account_key"])
    _request("PUT", url, b"", h, (201,))


def azurite_put_blob(server: dict, container: str, name: str, data: bytes) -> str:
    """Store data as the block blob container/name; returns az://container/name."""
    url = server["blob_endpoint"] + _key_path(container, name)
    h = _shared_key_headers("PUT", url, data,
                            {"x-ms-blob-type": "BlockBlob", "Content-Type": "application/octet-stream"},
                            server["account_name"], server["account_key"])
    _request("PUT", url, data, h, (201,))
    return f"az://{container}/{name}"


# ---------------------------------------------------------------------------
# Self-test: python3 tests/object_storage/servers.py


# ---------------------------------------------------------------------------
# nginx (the system's, from Debian's nginx-light)

_NGINX_CONF = """
{user}
daemon off;
worker_processes 2;
worker_shutdown_timeout 1s;
pid {work}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {work}/tmp/body;
    proxy_temp_path {work}/tmp/proxy;
    fastcgi_temp_path {work}/tmp/fastcgi;
    uwsgi_temp_path {work}/tmp/uwsgi;
    scgi_temp_path {work}/tmp/scgi;
    sendfile on;
    keepalive_requests 1000000;
    default_type application/octet-stream;
    types {{ }}
    server {{
        listen 127.0.0.1:{port};
        listen 127.0.0.1:{tls_port} ssl;
        ssl_certificate {work}/server.pem;
        ssl_certificate_key {work}/server.key;
        root {work}/www;
        location = /health {{ return 200 "ok\\n"; }}
        location /files/ {{ }}
        location /norange/ {{ alias {work}/www/files/; max_ranges 0; }}
        location /private/ {{
            alias {work}/www/files/;
            if ($http_authorization != "Bearer {token}") {{ return 403; }}
        }}
        location ~ ^/redirect/(.*)$ {{
            return 302 /signed/$1?AWSAccessKeyId=AKIDEXAMPLE&Expires=4102444800&Signature=sig1;
        }}
        location /signed/ {{
            alias {work}/www/files/;
            if ($arg_Signature != "sig1") {{ return 403; }}
        }}
        # A model hub (HF_ENDPOINT=url): resolve URLs want the Hub token and
        # redirect to a CDN on another host (localhost) with a signed
        # query; the CDN refuses any credential. The tree API is static JSON.
        location /api/models/ {{ default_type application/json; }}
        location /cdn/ {{
            alias {work}/www/hub/;
            if ($http_authorization) {{ return 400; }}
        }}
        location ~ ^/([^/]+)/([^/]+)/resolve/([^/]+)/(.*)$ {{
            if ($http_authorization != "Bearer {hub_token}") {{ return 401; }}
            return 302 http://localhost:{port}/cdn/$1/$2/$3/$4?X-Amz-Signature=sig1;
        }}
    }}
}}
"""

NGINX_TOKEN = "secret-token"
NGINX_HUB_TOKEN = "hf_test_token"


def _nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if not found:
        _missing("nginx", "/usr/sbin/nginx")
    return found


def _make_certs(work: Path) -> None:
    """A CA (ca.pem) and a certificate for 127.0.0.1 and localhost signed by
    it (server.pem, server.key), with the openssl command."""
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=str(work), check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    (work / "ext.cnf").write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=model-streamer test CA",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign")
    run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf")


def start_nginx(tmp_dir) -> dict:
    """Start nginx serving tmp_dir/.../www/files over http and https (a
    certificate from a CA made here).

    Returns dict(url="http://127.0.0.1:PORT", tls_url="https://127.0.0.1:PORT",
    ca_file=path of the CA's PEM, root=Path of the served files, token=the
    bearer token /private/ wants, hub_token=the one the hub wants, stop=callable,
    log=Path). Paths under the root are served at /files/NAME (ranges, ETag),
    /norange/NAME (Range ignored), /private/NAME (403 without the token) and
    /redirect/NAME (302 to /signed/NAME?...&Signature=sig1, a presigned-style
    URL). With HF_ENDPOINT set to url the server is a model hub for the
    files nginx_put_hub writes.
    """
    binary = _nginx_binary()

    def command(ports, work):
        for d in ("tmp", "www/files"):
            (work / d).mkdir(parents=True, exist_ok=True)
        _make_certs(work)
        conf = _NGINX_CONF.format(
            # As root, nginx would run its workers as nobody, who cannot
            # read a test's temporary directory.
            user="user root root;" if os.geteuid() == 0 else "",
            work=work, port=ports[0], tls_port=ports[1], token=NGINX_TOKEN, hub_token=NGINX_HUB_TOKEN)
        (work / "nginx.conf").write_text(conf)
        return [binary, "-p", str(work), "-c", str(work / "nginx.conf"),
                "-e", str(work / "error.log")], {}

    proc, ports = _start(
        "nginx", tmp_dir, 2, command,
        lambda ports: _http_status(f"http://{_hostport(ports[0])}/health") == 200,
    )
    work = Path(proc.log_path).parent
    return {
        "url": f"http://{_hostport(ports[0])}",
        "tls_url": f"https://{_hostport(ports[1])}",
        "ca_file": str(work / "ca.pem"),
        "root": work / "www" / "files",
        "token": NGINX_TOKEN,
        "hub_token": NGINX_HUB_TOKEN,
        "stop": proc.stop,
        "log": proc.log_path,
        "startup_seconds": proc.startup_seconds,
    }


_put_count = itertools.count(1)


def nginx_put(server: dict, name: str, data: bytes) -> str:
    """Write data as NAME under the server's root (a new file renamed over
    any old one, with a distinct modification time so a replaced file gets
    a new ETag); returns its http URL under /files/."""
    path = Path(server["root"]) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    t = time.time() + next(_put_count)
    os.utime(tmp, (t, t))
    os.replace(tmp, path)
    return f"{server['url']}/files/{name}"


def nginx_put_hub(server: dict, repo_id: str, revision: str, name: str, data: bytes) -> None:
    """Publish data as NAME of model repository REPO_ID at REVISION on the
    server's hub emulation: the file behind /REPO_ID/resolve/REVISION/NAME,
    and its entry in the tree API's listing."""
    root = Path(server["root"]).parent  # www/
    path = root / "hub" / repo_id / revision / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    tree = root / "api" / "models" / repo_id / "tree" / revision
    tree.parent.mkdir(parents=True, exist_ok=True)
    entries = json.loads(tree.read_text()) if tree.exists() else []
    entries = [e for e in entries if e["path"] != name]
    entries.append({"type": "file", "path": name, "size": len(data),
                    "oid": hashlib.sha1(data).hexdigest()})
    tree.write_text(json.dumps(sorted(entries, key=lambda e: e["path"])))


def _selftest() -> None:  # pragma: no cover - run by hand or in CI
    import tempfile  # noqa: PLC0415

    data = bytes((i * 7 + (i >> 8)) & 0xFF for i in range(3 << 20))
    with tempfile.TemporaryDirectory() as tmp:
        for start, check in (
            (start_minio, _selftest_minio),
            (start_fake_gcs, _selftest_gcs),
            (start_azurite, _selftest_azurite),
        ):
            srv = start(tmp)
            try:
                print(f"{start.__name__}: ready in {srv['startup_seconds']:.2f} s")
                check(srv, data)
            finally:
                srv["stop"]()
                srv["stop"]()  # idempotent
            print(f"{start.__name__}: ok, stopped")


def _selftest_minio(srv: dict, data: bytes) -> None:
    minio_create_bucket(srv, "bucket")
    minio_put_object(srv, "bucket", "dir/a b.bin", data)
    minio_put_object(srv, "bucket", "empty.bin", b"")
    url = srv["endpoint"] + _key_path("bucket", "dir/a b.bin")
    h = _sigv4_headers("GET", url, b"", {"Range": "bytes=1048570-1048585"},
                       srv["access_key"], srv["secret_key"], srv["region"])
    got = _request("GET", url, b"", h, (206,))
    assert got == data[1048570:1048586], got


def _selftest_gcs(srv: dict, data: bytes) -> None:
    gcs_create_bucket(srv, "bucket")
    gcs_put_object(srv, "bucket", "dir/a b.bin", data)
    url = srv["endpoint"] + "b/bucket/o/" + urllib.parse.quote("dir/a b.bin", safe="") + "?alt=media"
    got = _request("GET", url, b"", {"Range": "bytes=1048570-1048585"}, (206,))
    assert got == data[1048570:1048586], got


def _selftest_azurite(srv: dict, data: bytes) -> None:
    azurite_create_container(srv, "container")
    azurite_put_blob(srv, "container", "dir/a b.bin", data)
    url = srv["blob_endpoint"] + _key_path("container", "dir/a b.bin")
    h = _shared_key_headers("GET", url, b"", {"x-ms-range": "bytes=1048570-1048585"},
                            srv["account_name"], srv["account_key"])
    got = _request("GET", url, b"", h, (206,))
    assert got == data[1048570:1048586], got


if __name__ == "__main__":
    _selftest()
