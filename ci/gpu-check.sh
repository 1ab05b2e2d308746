#!/usr/bin/env bash
# The CUDA tests and the page-cache-to-GPU benchmark, on a GPU machine that
# has python3 with torch, safetensors and pytest but no Go, no cffi and no
# network. Prepare here with `make gpu-bundle`, then run there, from the
# repository root, with .gpu and .whl carried along:
#
#     bash ci/gpu-check.sh          # logs and results in $OUT (default ./gpu-out)
#
# Installs cffi + pycparser into /tmp/site (this project's needs) and the
# peer, runai-model-streamer 0.17.0 + humanize, into /tmp/peer-site (kept
# apart: both are imported as runai_model_streamer), unpacks the library,
# runs the tests that need CUDA, then bench/gpu.py. Exits non-zero if either
# failed. Whole run: well under 10 minutes (each step has its own timeout).

set -uo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-$PWD/gpu-out}
PY=${PYTHON:-python3}
TEST_TIMEOUT=${GPU_CHECK_TEST_TIMEOUT:-200}
BENCH_TIMEOUT=${GPU_CHECK_BENCH_TIMEOUT:-330}
BENCH_SIZE=${GPU_CHECK_BENCH_SIZE:-8g}
DEVICE=${GPU_CHECK_DEVICE:-cuda:0}  # cpu: a dry run of this script without a GPU
LIB_DIR=python/runai_model_streamer/lib
mkdir -p "$OUT"

die() { echo "gpu-check: $*" >&2; exit 2; }

# The one wheel of a distribution (file names use _ for -): two versions would
# both install and the last would win silently.
wheel() {
    local found=(.whl/"$1"-*.whl)
    [ -e "${found[0]}" ] || die "no .whl/$1-*.whl: run 'make gpu-bundle' and carry .whl"
    [ ${#found[@]} -eq 1 ] || die "more than one .whl/$1-*.whl: ${found[*]}"
    echo "${found[0]}"
}

install_into() {
    local dir=$1 name whl
    shift
    mkdir -p "$dir"
    for name in "$@"; do
        whl=$(wheel "$name") || exit
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$dir" "$whl" || die "pip install of $whl into $dir failed"
    done
}

install_into /tmp/site cffi pycparser
install_into /tmp/peer-site runai_model_streamer humanize

[ -f .gpu/libmodelstreamer.so.xz ] || die "no .gpu/libmodelstreamer.so.xz: run 'make gpu-bundle' and carry .gpu"
mkdir -p "$LIB_DIR"
"$PY" -c 'import lzma, sys; open(sys.argv[2], "wb").write(lzma.decompress(open(sys.argv[1], "rb").read()))' \
    .gpu/libmodelstreamer.so.xz "$LIB_DIR/libmodelstreamer.so" || die "cannot unpack the library"
# The header the library was built with (its cdef), if the bundle has it;
# otherwise the package falls back to go/capi/model_streamer.h.
if [ -f .gpu/model_streamer.h ]; then cp .gpu/model_streamer.h "$LIB_DIR/"; fi
# The user contract's examples (tests/test_spec_examples.py) run on cuda:0 when present.
if [ -f .gpu/usage.md ]; then export MODEL_STREAMER_SPEC=$PWD/.gpu/usage.md; fi

export PYTHONPATH=python:/tmp/site
export PYTHONUNBUFFERED=1

{
    nvidia-smi --query-gpu=name,driver_version,memory.total,pcie.link.gen.current,pcie.link.width.current \
        --format=csv,noheader 2>&1 || echo "nvidia-smi failed"
    "$PY" -c 'import sys, torch, safetensors, cffi, runai_model_streamer as m
print("python", sys.version.split()[0], "| torch", torch.__version__, "| CUDA", torch.version.cuda,
      "| available:", torch.cuda.is_available(), "| devices:", torch.cuda.device_count())
print("safetensors", safetensors.__version__, "| cffi", cffi.__version__, "| runai_model_streamer from", m.__file__)'
    echo "cpus $(nproc), $(awk '/MemTotal/ {print int($2 / 1048576) " GiB"}' /proc/meminfo)"
} 2>&1 | tee "$OUT/env.log"
nvidia-smi > "$OUT/nvidia-smi.log" 2>&1

# Every test that uses CUDA when it is there: GPU delivery (+ NCCL, which skips
# with one GPU), the API's CUDA device, and the spec's examples (cuda:0).
echo "== tests (timeout ${TEST_TIMEOUT}s)"
timeout -k 10 "$TEST_TIMEOUT" "$PY" -m pytest -x -q -p no:cacheprovider \
    tests/distributed/test_gpu.py tests/distributed/test_cache_fill.py tests/test_api.py tests/test_spec_examples.py \
    -k "gpu or cuda or nccl or spec_examples" 2>&1 | tee "$OUT/tests.log"
tests_rc=${PIPESTATUS[0]}

echo "== bench/gpu.py (timeout ${BENCH_TIMEOUT}s)"
timeout -k 10 "$BENCH_TIMEOUT" "$PY" bench/gpu.py --device "$DEVICE" --size "$BENCH_SIZE" --reps 3 \
    --peer-python "$PY" --peer-pythonpath /tmp/peer-site --out "$OUT" 2>&1 | tee "$OUT/bench.log"
bench_rc=${PIPESTATUS[0]}

echo "== gpu-check: tests exit $tests_rc, bench exit $bench_rc (124 = timed out); logs in $OUT"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
