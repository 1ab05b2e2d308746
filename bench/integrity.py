"""Integrity benchmark: the cost of MODEL_STREAMER_VERIFY=auto against off.

One SafeTensors checkpoint, streamed in these forms, each with verify auto
and off, every run in a fresh process whose consumer reads every byte of
every tensor, all in one interleaved run (medians and ratios printed):

  local-hot   a local file with its checksum sidecar (`model-streamer
              checksum`), in the page cache (auto reads it by mapping)
  local-cold  the same, dropped from the page cache (posix_fadvise
              DONTNEED on the file and its sidecar) before every run
  crc32       a MinIO object with a full-object x-amz-checksum-crc32 (what
              boto3 writes by default; verified with combined CRCs)
  md5         a MinIO object without (its ETag is the content's MD5: auto
              does not verify MD5, so this is the cost of skipping it)
  sidecar     the MD5-only object with a sidecar object beside it (auto
              checks each tensor against the sidecar)

    .venv/bin/python bench/integrity.py --size 1GiB --reps 3

MinIO shares the machine's cores with the client: its figures are CPU-bound
client+server rates of this machine, not a network rate. --no-minio runs the
local forms only.
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zlib

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
SERVERS = os.path.join(REPO, "tests", "object_storage", "servers.py")
sys.path.insert(0, BENCH)

from run import drop_cache, fmt_bytes, log, parse_bytes, warm_cache  # noqa: E402

CONSUMER = r"""
import json, os, sys, time
import torch
from runai_model_streamer import SafetensorsStreamer
uri = sys.argv[1]
t0 = time.perf_counter()
total = 0
check = 0
with SafetensorsStreamer() as s:
    s.stream_file(uri)
    for name, t in s.get_tensors():
        b = t.reshape(-1).view(torch.uint8)
        # Reads every byte (as int64 words where the size allows: a fast pass).
        w = b.view(torch.int64) if b.numel() % 8 == 0 else b.to(torch.int64)
        check = (check + int(w.sum())) & 0xFFFFFFFFFFFFFFFF
        total += b.numel()
print(json.dumps({"s": time.perf_counter() - t0, "bytes": total, "check": check}))
"""


def load_servers():
    subprocess.run(["bash", os.path.join(REPO, "ci", "install-servers.sh")], check=True,
                   stdout=sys.stderr)
    spec = importlib.util.spec_from_file_location("model_streamer_bench_servers", SERVERS)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def make_checkpoint(size: int) -> bytes:
    import torch
    from safetensors.torch import save

    n = 64
    per = size // n // 2  # bf16
    g = torch.Generator().manual_seed(0)
    return save({f"layer.{i}.weight": torch.randn(per, generator=g).to(torch.bfloat16)
                 for i in range(n)})


def put(servers, srv, bucket, key, data, crc32):
    headers = {"Content-Type": "application/octet-stream"}
    if crc32:
        headers["x-amz-checksum-crc32"] = base64.b64encode(
            (zlib.crc32(data) & 0xFFFFFFFF).to_bytes(4, "big")).decode()
    url = srv["endpoint"] + servers._key_path(bucket, key)
    h = servers._sigv4_headers("PUT", url, data, headers, srv["access_key"], srv["secret_key"],
                               srv["region"])
    servers._request("PUT", url, data, h, (200,))
    return f"s3://{bucket}/{key}"


def checksum(python, uri, env):
    r = subprocess.run([python, "-m", "runai_model_streamer.cli", "checksum", "--no-progress", uri],
                       capture_output=True, text=True, env=env, cwd=BENCH)
    if r.returncode != 0:
        raise SystemExit(f"model-streamer checksum {uri}: {r.stderr.strip()[-500:]}")
    log(r.stdout.strip())


def verify_algorithm(python, uri, env):
    """What the stream verifies the object with (the metadata's "verify")."""
    scheme = uri.split("://")[0] if "://" in uri else "file"
    code = ("import json, sys\nfrom runai_model_streamer import _native, config\n"
            f"s = _native.Stream([sys.argv[1]], settings=config.backend_settings(scheme={scheme!r}))\n"
            "print(json.dumps(s.metadata()['files'][0].get('verify')))\ns.close()\n")
    r = subprocess.run([python, "-c", code, uri], capture_output=True, text=True, env=env,
                       cwd=BENCH)
    return r.stdout.strip() if r.returncode == 0 else f"(probe failed: {r.stderr.strip()[-300:]})"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="1GiB", help="checkpoint size (default 1GiB)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--python", default=os.path.join(REPO, ".venv", "bin", "python"))
    p.add_argument("--minio-dir", default="/tmp")
    p.add_argument("--no-minio", action="store_true", help="local files only")
    a = p.parse_args()

    os.makedirs(a.minio_dir, exist_ok=True)
    work = tempfile.mkdtemp(prefix="model-streamer-intbench-", dir=a.minio_dir)
    srv = None
    try:
        data = make_checkpoint(parse_bytes(a.size))
        log(f"checkpoint: {fmt_bytes(len(data))}")
        local = os.path.join(work, "local", "model.safetensors")
        os.makedirs(os.path.dirname(local))
        with open(local, "wb") as f:
            f.write(data)
        base_env = dict(os.environ)
        base_env.pop("MODEL_STREAMER_READ_MODE", None)
        checksum(a.python, local, base_env)
        objects = {"local-hot": local, "local-cold": local}
        envs = {"local-hot": base_env, "local-cold": base_env}
        if not a.no_minio:
            servers = load_servers()
            srv = servers.start_minio(os.path.join(work, "minio"))
            servers.minio_create_bucket(srv, "bench")
            env = dict(base_env, AWS_ENDPOINT_URL=srv["endpoint"], AWS_ACCESS_KEY_ID=srv["access_key"],
                       AWS_SECRET_ACCESS_KEY=srv["secret_key"], AWS_REGION=srv["region"],
                       AWS_EC2_METADATA_DISABLED="true", RUNAI_STREAMER_NO_BOTO3_SESSION="1",
                       RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING="0")
            objects["crc32"] = put(servers, srv, "bench", "crc32.safetensors", data, True)
            objects["md5"] = put(servers, srv, "bench", "md5.safetensors", data, False)
            objects["sidecar"] = put(servers, srv, "bench", "sidecar.safetensors", data, False)
            checksum(a.python, objects["sidecar"], env)
            envs.update(crc32=env, md5=env, sidecar=env)
        del data
        for kind, uri in objects.items():
            log(f"{kind}: under auto: {verify_algorithm(a.python, uri, envs[kind])}")
        configs = [(kind, mode) for kind in objects for mode in ("auto", "off")]
        results = {c: [] for c in configs}
        checks = {}
        for rep in range(a.reps):
            order = configs[rep % len(configs):] + configs[:rep % len(configs)]
            for kind, mode in order:
                if kind == "local-cold":
                    drop_cache([local, local + ".checksums.json"])
                elif kind == "local-hot":
                    warm_cache([local])
                r = subprocess.run([a.python, "-c", CONSUMER, objects[kind]], capture_output=True,
                                   text=True, env=dict(envs[kind], MODEL_STREAMER_VERIFY=mode),
                                   cwd=BENCH, timeout=600)
                if r.returncode != 0:
                    log(f"{kind} {mode}: FAILED: {r.stderr.strip()[-500:]}")
                    return 1
                out = json.loads(r.stdout.strip().splitlines()[-1])
                checks.setdefault("all", out["check"])
                assert out["check"] == checks["all"], "bytes differ between runs"
                rate = out["bytes"] / out["s"] / 1e9
                results[(kind, mode)].append(rate)
                log(f"rep {rep + 1} {kind:10s} verify={mode:4s} {rate:.2f} GB/s ({out['s']:.2f} s)")
        print(f"\nIntegrity: {fmt_bytes(parse_bytes(a.size))} checkpoint, {a.reps} reps interleaved, "
              f"medians (GB/s of tensor bytes, consumer reads every byte)")
        for kind in objects:
            on = statistics.median(results[(kind, 'auto')])
            off = statistics.median(results[(kind, 'off')])
            print(f"  {kind:10s}: auto {on:.2f}  off {off:.2f}  auto/off {on / off:.3f}   "
                  f"(per rep auto {', '.join(f'{x:.2f}' for x in results[(kind, 'auto')])}; "
                  f"off {', '.join(f'{x:.2f}' for x in results[(kind, 'off')])})")
        return 0
    finally:
        if srv is not None:
            srv["stop"]()
        subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    sys.exit(main())
