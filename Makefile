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
GO_SOURCES := $(shell find go -name '*.go' -not -name '*_test.go') $(HEADER) go/go.mod go/go.sum $(wildcard go/capi/*.c)
# A count, not a duration: a duration can end while a worker is minimising an
# input, which go test reports as a failure (context deadline exceeded).
FUZZTIME ?= 600000x

.PHONY: all build dev servers demo test test-go test-python fuzz bench lint clean

# Tests never skip for want of a server: the servers are installed first.
export MODEL_STREAMER_REQUIRE_SERVERS := 1

all: build

build: $(LIB)

$(LIB): $(GO_SOURCES)
	mkdir -p $(dir $@)
	cd go && CGO_ENABLED=1 $(GO) build -trimpath -ldflags="-s -w" -buildmode=c-shared -o ../$@ ./capi
	cp $(HEADER) python/runai_model_streamer/lib/model_streamer.h
	rm -f $(basename $@).h

# The virtual environment: torch pinned so the pip cache serves repeat installs.
$(VENV)/.installed: pyproject.toml
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q "torch==$(TORCH_VERSION)"
	$(VPY) -m pip install -q -e ".[test]"
	touch $@

dev: build $(VENV)/.installed

# MinIO, fake-gcs-server and Azurite, pinned, into .tools/ (idempotent).
servers:
	bash ci/install-servers.sh

demo: dev
	$(VENV)/bin/model-streamer demo

test: dev servers test-go test-python

test-go: servers
	cd go && $(GO) vet ./... && $(GO) test -count=1 ./...
	cd go && $(GO) test -run '^$$' -fuzz FuzzParse -fuzztime $(FUZZTIME) -fuzzminimizetime 10s ./safetensors

test-python: dev servers
	$(VPY) -m pytest -q tests

bench: dev
	$(VPY) bench/run.py $(BENCH_ARGS)

lint:
	cd go && test -z "$$(gofmt -l .)" && $(GO) vet ./...

clean:
	rm -rf $(VENV) $(LIB) python/runai_model_streamer/lib/model_streamer.h build dist *.egg-info
