# model-streamer build, test and benchmark entry points.
# Every target installs what it needs, so each works on a fresh machine.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
TORCH_VERSION ?= 2.9.1
GO ?= go
LIB := python/runai_model_streamer/lib/libmodelstreamer.so
HEADER := go/capi/model_streamer.h
VERSION_PY := python/runai_model_streamer/_version.py
# The one place the version is written; the library reports it (ms_version).
VERSION := $(shell sed -n 's/^__version__ = "\(.*\)"$$/\1/p' $(VERSION_PY))
GO_SOURCES := $(shell find go -name '*.go' -not -name '*_test.go') $(HEADER) go/go.mod go/go.sum $(wildcard go/capi/*.c) $(VERSION_PY)
# A count, not a duration: a duration can end while a worker is minimising an
# input, which go test reports as a failure (context deadline exceeded).
FUZZTIME ?= 600000x

.PHONY: all build dev servers demo test test-go test-python fuzz bench lint clean gpu-bundle ffi \
	wheel sdist image-test

# Tests never skip for want of a server: the servers are installed first.
export MODEL_STREAMER_REQUIRE_SERVERS := 1

all: build

build: $(LIB)

$(LIB): $(GO_SOURCES)
	mkdir -p $(dir $@)
	cd go && CGO_ENABLED=1 $(GO) build -trimpath -ldflags="-s -w -X main.version=$(VERSION)" -buildmode=c-shared -o ../$@ ./capi
	cp $(HEADER) python/runai_model_streamer/lib/model_streamer.h
	rm -f $(basename $@).h

# The C declarations precompiled by cffi (python/runai_model_streamer/_ffi_abi.py,
# committed): loading the library then parses no C. Run after changing the
# header's CDEF section; tests/test_abi.py says when it is stale.
ffi: $(VENV)/.installed
	$(VPY) -m runai_model_streamer._ffi_gen $(HEADER)

# The virtual environment: torch pinned so the pip cache serves repeat installs.
$(VENV)/.installed: pyproject.toml
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q "torch==$(TORCH_VERSION)"
	$(VPY) -m pip install -q -e ".[test]"
	touch $@

dev: build $(VENV)/.installed

# MinIO, fake-gcs-server and Azurite, pinned, into .tools/, and nginx (apt-get
# install nginx-light) for the http(s) backend (idempotent).
servers:
	bash ci/install-servers.sh

demo: dev
	$(VENV)/bin/model-streamer demo

test: dev servers test-go test-python

# -race: a race it finds is a bug the plain run can pass over (an empty
# sidecar entry written by two readers at once was one).
test-go: servers
	cd go && $(GO) vet ./... && $(GO) test -race -count=1 ./...
	cd go && $(GO) test -run '^$$' -fuzz FuzzParse -fuzztime $(FUZZTIME) -fuzzminimizetime 10s ./safetensors

test-python: dev servers
	$(VPY) -m pytest -q tests

bench: dev
	$(VPY) bench/run.py $(BENCH_ARGS)

# What ci/gpu-check.sh needs on the GPU machine (Python 3.12 with torch, but no
# Go, no cffi, no network, and a 64 MiB limit on what travels): the library
# xz-compressed into .gpu/ with its header and the spec's examples, and the
# wheels it lacks in .whl/ (both gitignored, carried). One version of each
# wheel: pip install --no-deps of two would let the last one win silently.
# numpy is there already; humanize too, but it is small and the peer needs it.
GPU_LIB_XZ := .gpu/libmodelstreamer.so.xz
GPU_WHEELS := cffi==2.1.1 pycparser==3.12 runai-model-streamer==0.17.0 humanize==4.17.0
GPU_PIP := --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	$(foreach n,30 28 27 17,--platform manylinux_2_$(n)_x86_64) --platform manylinux2014_x86_64 --platform manylinux1_x86_64
GPU_MAX_MIB := 60

$(GPU_LIB_XZ): $(LIB)
	mkdir -p $(dir $@)
	$(PYTHON) -c 'import lzma, sys; open(sys.argv[2], "wb").write(lzma.compress(open(sys.argv[1], "rb").read(), preset=9))' $(LIB) $@.tmp
	mv $@.tmp $@
	cp $(dir $(LIB))model_streamer.h .gpu/  # the cdef this library was built with

gpu-bundle: $(GPU_LIB_XZ)
	mkdir -p .whl
	if [ -f ../shared/spec/usage.md ]; then install -m 644 ../shared/spec/usage.md .gpu/usage.md; fi  # for test_spec_examples
	set -e; for spec in $(GPU_WHEELS); do \
	  stem=$$(echo "$${spec%%==*}" | tr - _); ver=$${spec##*==}; \
	  for f in .whl/$$stem-*.whl; do \
	    case "$$f" in .whl/$$stem-$$ver-*) ;; *) if [ -e "$$f" ]; then rm -v "$$f"; fi ;; esac; \
	  done; \
	  ls .whl/$$stem-$$ver-*.whl >/dev/null 2>&1 || $(PYTHON) -m pip download -q $(GPU_PIP) -d .whl "$$spec"; \
	done
	@tree=$$(git ls-files -z --cached --others --exclude-standard | xargs -0 stat -c %s 2>/dev/null | awk '{s += $$1} END {print s + 0}'); \
	gpu=$$(find .gpu -type f -printf '%s\n' | awk '{s += $$1} END {print s + 0}'); \
	whl=$$(find .whl -type f -printf '%s\n' | awk '{s += $$1} END {print s + 0}'); \
	total=$$((tree + gpu + whl)); \
	ls -l $(GPU_LIB_XZ) .whl/*.whl; \
	echo "travels: tree $$((tree >> 10)) KiB + .gpu $$((gpu >> 10)) KiB + .whl $$((whl >> 10)) KiB = $$((total >> 20)) MiB (limit $(GPU_MAX_MIB) MiB)"; \
	if [ $$total -gt $$(($(GPU_MAX_MIB) << 20)) ]; then echo "gpu-bundle: over $(GPU_MAX_MIB) MiB" >&2; exit 1; fi

# The wheel, tagged py3-none-manylinux_X_Y_<arch> from the library's glibc
# symbol needs (python/_manylinux.py); auditwheel, in the venv, must agree:
# a linux_* tag (no package index takes one) or a tag other than the one
# auditwheel measures fails the target.
WHEEL_TOOLS := $(VENV)/.wheel-tools
$(WHEEL_TOOLS):
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q "auditwheel>=6" build
	touch $@

wheel: $(WHEEL_TOOLS)
	rm -f dist/model_streamer-*.whl
	$(VPY) -m pip wheel -q --no-deps -w dist .
	bash ci/check-wheel.sh $(VPY) dist/model_streamer-*.whl

# The source distribution, then a wheel built from it alone (Go on PATH).
sdist: $(WHEEL_TOOLS)
	rm -f dist/model_streamer-*.tar.gz
	$(VPY) -m build --sdist --outdir dist .
	@if tar -tzf dist/model_streamer-*.tar.gz | grep '\.so$$'; then echo "sdist: carries a built library" >&2; exit 1; fi
	rm -rf build/sdist-check && mkdir -p build/sdist-check
	tar -xzf dist/model_streamer-*.tar.gz -C build/sdist-check
	$(VPY) -m pip wheel -q --no-deps -w build/sdist-check/dist build/sdist-check/model_streamer-*/
	bash ci/check-wheel.sh $(VPY) build/sdist-check/dist/model_streamer-*.whl

# The loader image (deploy/Dockerfile), built and tested on this machine
# without a container daemon: ci/image-test.sh (about 2 minutes here once
# the base images exist, 10 from nothing; not part of `make test`).
image-test:
	bash ci/image-test.sh

lint:
	cd go && test -z "$$(gofmt -l .)" && $(GO) vet ./...

clean:
	rm -rf $(VENV) $(LIB) python/runai_model_streamer/lib/model_streamer.h build dist *.egg-info
