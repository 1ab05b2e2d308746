"""Library start-up cost (issue 8, item 2): size, dlopen and first exported
call of one or more builds of libmodelstreamer.so, in fresh processes.

    .venv/bin/python bench/lib_load.py [--runs 16] LIB.so [LIB.so ...]

Each run is a fresh interpreter that times `ctypes.CDLL(lib)` (the dynamic
loader: relocations) and then the first `ms_version()` (which returns once the
Go runtime and every linked package's init have run). The libraries are
interleaved, their order reversed every other round, so a machine's drift
falls on all of them. Each is loaded from a copy written at the start of the
run and read again before every run, as bench/first_tensor.py does: how a
library's pages came into the page cache moves its start by 0.4-0.5 ms.
Prints a Markdown table of medians (min-max), ms.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from first_tensor import warm  # noqa: E402

CHILD = r"""
import ctypes, sys, time
t0 = time.perf_counter()
lib = ctypes.CDLL(sys.argv[1])
t1 = time.perf_counter()
lib.ms_version.restype = ctypes.c_char_p
lib.ms_version()
t2 = time.perf_counter()
print((t1 - t0) * 1e3, (t2 - t1) * 1e3)
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=16)
    ap.add_argument("libs", nargs="+", help="paths of libmodelstreamer.so builds")
    a = ap.parse_args()
    libs = [os.path.abspath(l) for l in a.libs]
    res = {l: [] for l in libs}
    with tempfile.TemporaryDirectory(prefix="lib-load-") as tmp:
        copies = {}
        for i, lib in enumerate(libs):
            os.makedirs(os.path.join(tmp, str(i)))
            copies[lib] = shutil.copy(lib, os.path.join(tmp, str(i)))
        for r in range(a.runs):
            for lib in libs if r % 2 == 0 else libs[::-1]:
                warm(copies[lib])
                out = subprocess.run([sys.executable, "-c", CHILD, copies[lib]], capture_output=True, text=True,
                                     check=True)
                res[lib].append(tuple(map(float, out.stdout.split())))

    def fmt(xs):
        return f"{statistics.median(xs):.1f} ({min(xs):.1f}-{max(xs):.1f})"

    print(f"{a.runs} fresh processes per library, interleaved; ms, median (min-max)\n")
    print("| library | `.so` size | `dlopen` ms | runtime + inits ms (first `ms_version`) | sum |")
    print("| --- | --- | --- | --- | --- |")
    for lib in libs:
        d, v = [x[0] for x in res[lib]], [x[1] for x in res[lib]]
        s = [x + y for x, y in res[lib]]
        print(f"| {lib} | {os.path.getsize(lib) / 1e6:.1f} MB | {fmt(d)} | {fmt(v)} | {statistics.median(s):.1f} |")


if __name__ == "__main__":
    main()
