"""GCS throughput of one or more builds of libmodelstreamer.so against
fake-gcs-server on 127.0.0.1, in fresh processes.

    .venv/bin/python bench/gcs_stream.py [--runs 10] [--mib 512] LIB.so [LIB.so ...]

Starts fake-gcs-server (tests/object_storage/servers.py, data under /tmp,
removed at the end), uploads one safetensors object of --mib MiB (8 float32
tensors), then streams it whole with SafetensorsStreamer (settings at their
defaults, MODEL_STREAMER_GCS_ENDPOINT pointing at the server) once per
library unmeasured and --runs times measured, the libraries interleaved, each
a fresh interpreter loading its library through MODEL_STREAMER_LIB. Loopback
throughput is bound by the server's CPU: this shows regressions in the
client, not what GCS itself does.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "object_storage"))
import servers  # noqa: E402

CHILD = r"""
import sys, time
from runai_model_streamer import SafetensorsStreamer
t0 = time.perf_counter()
n = 0
with SafetensorsStreamer() as s:
    s.stream_file(sys.argv[1])
    for name, t in s.get_tensors():
        n += t.numel() * t.element_size()
print(time.perf_counter() - t0, n)
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--mib", type=int, default=512, help="object size (a multiple of 8 MiB)")
    ap.add_argument("libs", nargs="+", help="paths of libmodelstreamer.so builds")
    a = ap.parse_args()
    libs = [os.path.abspath(l) for l in a.libs]

    import torch
    from safetensors.torch import save

    tmp = Path(tempfile.mkdtemp(prefix="gcs-stream-", dir="/tmp"))
    srv = servers.start_fake_gcs(tmp)
    try:
        per = a.mib * (1 << 20) // 8 // 4
        data = save({f"t{i}": torch.full((per,), float(i)) for i in range(8)})
        servers.gcs_create_bucket(srv, "bench")
        uri = servers.gcs_put_object(srv, "bench", "model.safetensors", data)
        size, want = len(data), 8 * per * 4
        del data
        env = dict(os.environ, PYTHONPATH=str(REPO / "python"), MODEL_STREAMER_GCS_ENDPOINT=srv["endpoint"])
        res = {l: [] for l in libs}
        for r in range(a.runs + 1):  # round 0 warms the server and the page cache
            for lib in libs if r % 2 == 0 else libs[::-1]:
                out = subprocess.run([sys.executable, "-c", CHILD, uri], env=dict(env, MODEL_STREAMER_LIB=lib),
                                     capture_output=True, text=True, check=True).stdout.split()
                secs, n = float(out[0]), int(out[1])
                if n != want:
                    sys.exit(f"{lib}: {n} tensor bytes, want {want}")
                if r:
                    res[lib].append(secs)
    finally:
        srv["stop"]()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{size / 2**20:.0f} MiB object, {a.runs} fresh processes per library, interleaved; MB/s median (min-max)")
    for lib in libs:
        mbs = [size / s / 1e6 for s in res[lib]]
        print(f"  {lib}: {statistics.median(mbs):.0f} ({min(mbs):.0f}-{max(mbs):.0f}) MB/s")


if __name__ == "__main__":
    main()
