"""Fixed cost of a load (issue 8, item 2): time to the first tensor on a hot
file, in fresh processes.

    .venv/bin/python bench/first_tensor.py [--file F] [--runs 15] [--profile] [--compare REV]

Each run is a fresh interpreter (`-c` the CHILD code below) that prints, in ms:
  torch_import     `import torch`
  import_to_first  `import runai_model_streamer` (torch already imported, as any
                   caller has it) to the first tensor yielded, less --idle-ms
  stream_to_first  `stream_files()` called to the first tensor yielded
  ctor_to_first    `SafetensorsStreamer()` to the first tensor yielded
  total            the whole load (every tensor taken, none used)
and the medians over --runs. The file (1 GiB by default, written by
safetensors.torch.save_file, under --data-dir) is read before every run so it
is hot. --profile runs one more fresh process under cProfile and prints the
top functions of stream_files -> first tensor.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import torch
t1 = time.perf_counter()
import runai_model_streamer
from runai_model_streamer import SafetensorsStreamer
time.sleep(float(sys.argv[2]) / 1000)  # --idle-ms: a caller's work between import and load
t2 = time.perf_counter()
paths = json.loads(sys.argv[1])
prof = None
if len(sys.argv) > 3:
    import cProfile
    prof = cProfile.Profile()
s = SafetensorsStreamer()
t3 = time.perf_counter()
if prof: prof.enable()
s.stream_files(paths)
t4 = time.perf_counter()
it = s.get_tensors()
name, t = next(it)
t5 = time.perf_counter()
if prof:
    prof.disable()
    import pstats, io
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(25)
    sys.stderr.write(out.getvalue())
n = 1
for name, t in it:
    n += 1
t6 = time.perf_counter()
s.__exit__(None, None, None)
ms = lambda a, b: (b - a) * 1000
print(json.dumps({"torch_import": ms(t0, t1), "import_to_first": ms(t1, t5) - float(sys.argv[2]),
                  "stream_to_first": ms(t3, t5), "stream_files": ms(t3, t4), "ctor_to_first": ms(t2, t5),
                  "total": ms(t3, t6), "tensors": n}))
"""


def ensure_file(path, gib):
    if os.path.exists(path):
        return
    import torch
    from safetensors.torch import save_file
    # A Llama-like layer mix (bf16 matrices, f32 norms), random finite values.
    tensors, total, i = {}, 0, 0
    g = torch.Generator().manual_seed(0)
    while total < gib * (1 << 30):
        for name, shape, dt in ((f"l{i}.attn.q", (4096, 4096), torch.bfloat16),
                                (f"l{i}.mlp.up", (4096, 11008), torch.bfloat16),
                                (f"l{i}.norm", (4096,), torch.float32)):
            tensors[name] = torch.randn(shape, generator=g).to(dt)
            total += tensors[name].numel() * tensors[name].element_size()
        i += 1
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_file(tensors, path + ".tmp")
    os.rename(path + ".tmp", path)


def warm(path):
    with open(path, "rb") as f:
        while f.read(64 << 20):
            pass


def build_revision(rev, dest):
    """The package of git revision rev, with its library built from the same
    revision, under dest; returns the directory to put on PYTHONPATH."""
    src = os.path.join(dest, "src")
    os.makedirs(src)
    archive = subprocess.run(["git", "archive", rev], cwd=REPO, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", src], input=archive, check=True)
    lib_dir = os.path.join(src, "python", "runai_model_streamer", "lib")
    os.makedirs(lib_dir, exist_ok=True)
    subprocess.run(["go", "build", "-trimpath", "-ldflags=-s -w", "-buildmode=c-shared",
                    "-o", os.path.join(lib_dir, "libmodelstreamer.so"), "./capi"],
                   cwd=os.path.join(src, "go"), check=True, env=dict(os.environ, CGO_ENABLED="1"))
    shutil.copy(os.path.join(src, "go", "capi", "model_streamer.h"), lib_dir)
    return os.path.join(src, "python")


def library_of(python, env):
    """The path of the library the runs with env load."""
    r = subprocess.run([python, "-c", "from runai_model_streamer import _native; print(_native.library_path())"],
                       capture_output=True, text=True, env=env, cwd=REPO, check=True)
    return r.stdout.strip()


LIB_ENV = "MODEL_STREAMER_LIB"


def fresh_copy(lib, dest):
    """lib and its header (beside it) copied into the new directory dest;
    returns the copy's path."""
    os.makedirs(dest)
    for name in (os.path.basename(lib), "model_streamer.h"):
        shutil.copy(os.path.join(os.path.dirname(lib), name), dest)
    return os.path.join(dest, os.path.basename(lib))


def compile_package(python, env):
    """Writes the bytecode of the package the runs import, as installing it
    does: a source tree run with PYTHONDONTWRITEBYTECODE=1 (this project's
    development machine sets it) and no __pycache__ compiles every module on
    every import, 11-15 ms of import_to_first here that no installed copy
    pays."""
    r = subprocess.run([python, "-c", "import os, runai_model_streamer as m; print(os.path.dirname(m.__file__))"],
                       capture_output=True, text=True, env=env, cwd=REPO, check=True)
    subprocess.run([python, "-m", "compileall", "-q", r.stdout.strip()], env=env, cwd=REPO, check=True,
                   stdout=subprocess.DEVNULL)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="/tmp/model-streamer-bench/first-tensor")
    p.add_argument("--file", default=None, action="append",
                   help="a safetensors file, repeatable: all are streamed in one call "
                        "(default: DATA_DIR/1g.safetensors, made if missing)")
    p.add_argument("--runs", type=int, default=15)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--idle-ms", type=float, default=0,
                   help="sleep this long between the imports and SafetensorsStreamer() (a caller's own "
                        "work; with MODEL_STREAMER_PRELOAD=1 the runtime starts meanwhile); "
                        "left out of import_to_first")
    p.add_argument("--python", default=os.path.join(REPO, ".venv", "bin", "python"))
    p.add_argument("--compare", metavar="REV", action="append", default=[],
                   help="also run git revision REV (its package, with its library built into a "
                        "temporary copy), repeatable; each round runs this tree and every REV "
                        "once, in an order reversed every other round, so drift falls on all")
    a = p.parse_args()
    paths = a.file or [os.path.join(a.data_dir, "1g.safetensors")]
    if not a.file:
        ensure_file(paths[0], 1)
    for path in paths:
        warm(path)
    env = dict(os.environ)
    env.setdefault("RUNAI_STREAMER_LOG_LEVEL", "WARNING")
    compile_package(a.python, env)
    variants = {"this tree": dict(env)}  # each gets its own library copy (LIB_ENV) below
    with tempfile.TemporaryDirectory(prefix="first-tensor-") as tmp:
        for rev in a.compare:
            variants[rev] = dict(env, PYTHONPATH=build_revision(rev, os.path.join(tmp, rev.replace("/", "_"))))
            compile_package(a.python, variants[rev])
        # Every variant loads a copy of its library written just now. How a
        # library's pages came into the page cache changes its start: the
        # same build ran 0.4-0.5 ms slower from a file written half an hour
        # before (its pages since dropped and read back in smaller folios)
        # than from a copy written just before, even with every page cached.
        libs = {}
        for i, (name, venv) in enumerate(variants.items()):
            libs[name] = fresh_copy(library_of(a.python, venv), os.path.join(tmp, f"lib{i}"))
            venv[LIB_ENV] = libs[name]
        rows = {name: [] for name in variants}
        for i in range(a.runs):
            for name in list(variants) if i % 2 == 0 else list(variants)[::-1]:
                # Again before every run: this VM drops a few percent of a
                # file's cached pages within seconds (1% within 10 s here,
                # with 10 GB free), and a run should measure a hot file;
                # the library too, whose missing pages dlopen would read.
                for path in paths + [libs[name]]:
                    warm(path)
                r = subprocess.run([a.python, "-c", CHILD, json.dumps(paths), str(a.idle_ms)],
                                   capture_output=True, text=True, env=variants[name], cwd=REPO)
                if r.returncode != 0:
                    sys.exit(r.stderr[-3000:])
                rows[name].append(json.loads(r.stdout.strip().splitlines()[-1]))
    keys = ["torch_import", "import_to_first", "ctor_to_first", "stream_files", "stream_to_first", "total"]
    size = sum(os.path.getsize(p) for p in paths)
    for name, runs in rows.items():
        label = f" [{name}]" if a.compare else ""
        print(f"{' '.join(paths)}: {size / 1e9:.2f} GB, {runs[0]['tensors']} tensors, hot{label}; "
              f"median (min-max) of {a.runs} fresh processes, ms")
        for k in keys:
            xs = [r[k] for r in runs]
            print(f"  {k:<16} {statistics.median(xs):8.2f}  ({min(xs):.2f}-{max(xs):.2f})")
    if a.profile:
        r = subprocess.run([a.python, "-c", CHILD, json.dumps(paths), str(a.idle_ms), "profile"], capture_output=True, text=True, env=env, cwd=REPO)
        print(r.stderr)


if __name__ == "__main__":
    main()
