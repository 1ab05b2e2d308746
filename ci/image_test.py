"""The loader image's test (ci/image-test.sh builds the image, then runs this).

Against MinIO on 127.0.0.1 (tests/object_storage/servers.py starts it):
- the image: runs as uid 10001 with `model-streamer` as its entrypoint, holds
  no compiler, no Go, no torch, no numpy, and a manylinux wheel; its size;
- `model-streamer pull` inside it (read-only root file system, the models
  directory a volume) and the same pull outside it (a venv without torch),
  each byte compared with the checkpoint, alternating, timed;
- `ls` inside it; a pull of a missing prefix exits non-zero;
- the Go example program inside it digests the pulled checkpoint to the value
  computed here from the files.
Prints the figures and writes them as JSON (--out).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "object_storage"))
import servers  # noqa: E402

BUCKET = "models"
PREFIX = "llama"
UID = 10001
# Limits lowered, never raised: raising one is refused on this machine.
PODMAN = ["podman", "--runtime", "runc", "run", "--rm", "--network", "host",
          "--ulimit", "nofile=16384:16384", "--ulimit", "nproc=4096:4096"]
# What the runtime stage may add to its base: the wheel's library (58 MB),
# cffi, the Go example (63 MB in all when written): a copied wheel layer would show.
MAX_ADDED_MB = 75


def must(argv: List[str], **kw) -> str:
    p = subprocess.run(argv, capture_output=True, text=True, **kw)
    if p.returncode != 0:
        raise SystemExit(f"image-test: {' '.join(argv)} exited {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p.stdout


def check(cond: bool, what: str) -> None:
    if not cond:
        raise SystemExit(f"image-test: FAILED: {what}")
    print(f"image-test: ok: {what}")


# ---------------------------------------------------------------------------
# The checkpoint


def write_checkpoint(d: Path, total_mb: int, shards: int = 4) -> Dict[str, bytes]:
    """SafeTensors shards of random U8 tensors (8 per shard) plus the small
    files a model directory holds; returns {relative path: sha256}."""
    files = {}
    per_shard = (total_mb << 20) // shards
    for i in range(shards):
        sizes = [per_shard // 8] * 7 + [per_shard - 7 * (per_shard // 8)]
        header, off = {}, 0
        for j, n in enumerate(sizes):
            header[f"model.layers.{i}.w{j}"] = {"dtype": "U8", "shape": [n], "data_offsets": [off, off + n]}
            off += n
        raw = json.dumps(header).encode()
        raw += b" " * (-len(raw) % 8)
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        with open(d / name, "wb") as f:
            f.write(struct.pack("<Q", len(raw)) + raw)
            for n in sizes:
                f.write(os.urandom(n))
        files[name] = None
    (d / "original").mkdir()
    (d / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}\n')
    (d / "original" / "params.json").write_text('{"dim": 4096}\n')
    files.update({"config.json": None, "original/params.json": None})
    return {rel: sha256_file(d / rel) for rel in files}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tensor_digest(d: Path) -> str:
    """go/cmd/msdigest's digest: SHA-256 over the tensors sorted by (file,
    name), each "file\\0name\\0" and the SHA-256 of its bytes."""
    sums = {}
    for path in sorted(d.glob("*.safetensors")):
        with open(path, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            header = json.loads(f.read(n))
            base = 8 + n
            for name, t in header.items():
                if name == "__metadata__":
                    continue
                begin, end = t["data_offsets"]
                f.seek(base + begin)
                sums[f"{path.name}\0{name}"] = hashlib.sha256(f.read(end - begin)).digest()
    h = hashlib.sha256()
    for key in sorted(sums):
        h.update(key.encode() + b"\0" + sums[key])
    return h.hexdigest()


def tree_digests(d: Path) -> Dict[str, str]:
    return {str(p.relative_to(d)): sha256_file(p) for p in sorted(d.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------
# Pulls


PULLED = re.compile(r"pulled (\d+) file\(s\), (\d+) bytes .* in ([0-9.]+) s \(([0-9.]+) GB/s\)")


def parse_pull(out: str) -> Dict[str, float]:
    m = PULLED.search(out)
    if not m:
        raise SystemExit(f"image-test: no summary line in the pull's output:\n{out}")
    return {"files": int(m.group(1)), "bytes": int(m.group(2)), "seconds": float(m.group(3)),
            "gb_per_s": float(m.group(4))}


def envs(env: Dict[str, str]) -> List[str]:
    return [a for k, v in env.items() for a in ("-e", f"{k}={v}")]


def pull_inside(image: str, env: Dict[str, str], models: Path, uri: str) -> Dict[str, float]:
    start = time.perf_counter()
    out = must(PODMAN + ["--read-only", "-v", f"{models}:/models"] + envs(env)
               + [image, "pull", "--no-progress", uri, "/models/llama"])
    r = parse_pull(out)
    r["wall_seconds"] = round(time.perf_counter() - start, 3)
    return r


def pull_outside(lean: Path, env: Dict[str, str], models: Path, uri: str) -> Dict[str, float]:
    start = time.perf_counter()
    out = must([str(lean / "bin" / "model-streamer"), "pull", "--no-progress", uri,
                str(models / "llama")], env=env)
    r = parse_pull(out)
    r["wall_seconds"] = round(time.perf_counter() - start, 3)
    return r


def fresh(models: Path) -> None:
    if models.exists():
        shutil.rmtree(models)
    models.mkdir(parents=True)
    os.chown(models, UID, UID)


# ---------------------------------------------------------------------------


def inspect(image: str) -> dict:
    return json.loads(must(["podman", "image", "inspect", image]))[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--image", required=True)
    ap.add_argument("--runtime-base", required=True)
    ap.add_argument("--lean", required=True, type=Path, help="a venv with cffi and the wheel, no torch")
    ap.add_argument("--mb", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--build-seconds", type=int, default=0)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    image = args.image
    results: Dict[str, object] = {"image": image, "checkpoint_mb": args.mb,
                                  "build_seconds": args.build_seconds}

    # The image itself.
    info = inspect(image)
    cfg = info["Config"]
    check(cfg.get("User") == f"{UID}:{UID}", f"image user is {cfg.get('User')!r}")
    check(cfg.get("Entrypoint") == ["model-streamer"], f"entrypoint is {cfg.get('Entrypoint')}")
    uid = must(PODMAN + ["--entrypoint", "id", image, "-u"]).strip()
    check(uid == str(UID), f"a container runs as uid {uid}")
    probe = ("for t in gcc cc go make; do if command -v $t; then exit 1; fi; done; "
             "test ! -e /usr/local/go && cat /opt/model-streamer/lib/python3*/site-packages/"
             "model_streamer-*.dist-info/WHEEL")
    wheel = must(PODMAN + ["--entrypoint", "sh", image, "-c", probe])
    check(True, "no gcc, cc, go or make in the image")
    tag = re.search(r"^Tag: (\S+)$", wheel, re.M).group(1)
    check(tag.startswith("py3-none-manylinux_"), f"the installed wheel is tagged {tag}")
    results["wheel_tag_in_image"] = tag
    no_torch = must(PODMAN + ["--entrypoint", "python3", image, "-c",
                              "import importlib.util as u; print([m for m in ('torch', 'numpy') if u.find_spec(m)])"])
    check(no_torch.strip() == "[]", "neither torch nor numpy is installed in the image")
    size = info["Size"]
    base = inspect(args.runtime_base)["Size"]
    results.update(image_bytes=size, runtime_base_bytes=base, added_bytes=size - base)
    check(size - base <= MAX_ADDED_MB << 20,
          f"image {size / 1e6:.0f} MB, of which {(size - base) / 1e6:.0f} MB over its base "
          f"(limit {MAX_ADDED_MB} MiB)")

    with tempfile.TemporaryDirectory(prefix="image-test-", dir=ROOT / "build" / "image") as tmp:
        tmp = Path(tmp)
        os.chmod(tmp, 0o755)
        src = tmp / "src"
        src.mkdir()
        want = write_checkpoint(src, args.mb)
        srv = servers.start_minio(tmp / "minio")
        try:
            servers.minio_create_bucket(srv, BUCKET)
            for rel in want:
                servers.minio_put_object(srv, BUCKET, f"{PREFIX}/{rel}", (src / rel).read_bytes())
            env = {"AWS_ENDPOINT_URL": srv["endpoint"], "AWS_ACCESS_KEY_ID": srv["access_key"],
                   "AWS_SECRET_ACCESS_KEY": srv["secret_key"], "AWS_REGION": srv["region"],
                   "AWS_EC2_METADATA_DISABLED": "true", "RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING": "0"}
            host_env = {"PATH": os.environ["PATH"], "HOME": str(tmp), "AWS_CONFIG_FILE": str(tmp / "none"),
                        "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "none"), **env}
            uri = f"s3://{BUCKET}/{PREFIX}/"

            listing = json.loads(must(PODMAN + envs(env)
                                      + [image, "ls", "--recursive", "--json", uri]))
            got = sorted(o["uri"].split(uri, 1)[1] for o in listing["objects"])
            check(got == sorted(want), f"ls in the image lists the {len(want)} objects")
            outside_ls = json.loads(must([str(args.lean / "bin" / "model-streamer"), "ls", "--recursive",
                                          "--json", uri], env=host_env))
            check(outside_ls == listing, "ls in the no-torch venv lists the same")

            models = tmp / "models"
            inside, outside = [], []
            for _ in range(args.rounds):
                for where, runs in (("outside", outside), ("inside", inside)):
                    fresh(models)
                    r = (pull_inside(image, env, models, uri) if where == "inside"
                         else pull_outside(args.lean, host_env, models, uri))
                    got = tree_digests(models / "llama")
                    check(got == want, f"pull {where} the image: {len(got)} files, every byte equal "
                                       f"({r['gb_per_s']} GB/s)")
                    if where == "inside":
                        owners = {p.stat().st_uid for p in (models / "llama").rglob("*")}
                        check(owners == {UID}, f"the files pulled in the image belong to uid {owners}")
                    runs.append(r)
            results["pull_inside"], results["pull_outside"] = inside, outside

            digest = json.loads(must(PODMAN + ["-v", f"{models}:/models:ro", "--entrypoint",
                                               "model-streamer-go-example", image, "/models/llama"]))
            check(digest["sha256"] == tensor_digest(src) and digest["tensors"] == 32,
                  f"the Go example in the image digests {digest['tensors']} tensors, "
                  f"{digest['bytes']} bytes, as computed from the files")
            results["go_example"] = digest

            fresh(models)
            p = subprocess.run(PODMAN + ["-v", f"{models}:/models"] + envs(env)
                               + [image, "pull", f"s3://{BUCKET}/missing/", "/models/llama"],
                               capture_output=True, text=True)
            left = list(models.rglob("*"))
            check(p.returncode != 0 and not [x for x in left if x.is_file()],
                  f"a pull of a missing prefix exits {p.returncode} and writes no file")
        finally:
            srv["stop"]()

    best = lambda runs: max(r["gb_per_s"] for r in runs)  # noqa: E731
    print(f"image-test: image {size / 1e6:.0f} MB ({(size - base) / 1e6:.0f} MB over the base); "
          f"pull of {args.mb} MiB: inside {best(inside)} GB/s, outside {best(outside)} GB/s (best of "
          f"{args.rounds}); wheel tag in the image {tag}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"image-test: figures in {args.out}")


if __name__ == "__main__":
    main()
