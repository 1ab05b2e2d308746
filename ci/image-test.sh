#!/usr/bin/env bash
# make image-test: builds the loader image (deploy/Dockerfile) on this machine,
# which has no container daemon and no registry access, then tests it against
# MinIO on loopback (ci/image_test.py).
#
# - podman, buildah, runc and mmdebstrap come from Debian's package repository;
# - the base images are stand-ins built with mmdebstrap from Debian packages
#   (the Dockerfile's defaults are the public python and golang images):
#   Debian bullseye with python3, gcc and make for the build stage (glibc 2.31,
#   as python:3.12-bullseye), Debian bookworm with python3 for the runtime;
# - the Go toolchain is this machine's (`go env GOROOT`, which must satisfy
#   go/go.mod: Debian's golang package is older), imported as the GO_IMAGE;
# - RUN steps use buildah's chroot isolation with the host network, and the
#   host's Go module and build caches are mounted, so only what is missing is
#   fetched (Go module proxy, Python package index);
# - containers run with podman's runc runtime: crun fails here on the hybrid
#   cgroup layout, and rlimits are lowered explicitly (raising them is refused).
#
# MIRROR: Debian mirror for mmdebstrap (default: mmdebstrap's own).
# IMAGE_TEST_MB: checkpoint size pulled (default 1024); IMAGE_TEST_ROUNDS: pulls
# inside and outside the image, alternating (default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
work=build/image
mkdir -p "$work"
tag=localhost/model-streamer:test

missing=()
for t in podman buildah runc mmdebstrap; do command -v "$t" >/dev/null || missing+=("$t"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "image-test: installing ${missing[*]}"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q podman buildah runc mmdebstrap uidmap
fi

# base NAME SUITE PACKAGES: a minbase root file system imported as
# localhost/ms-base:NAME, rebuilt when the package list changes. Docs, man
# pages, locales and apt lists are left out, as slim images do.
base() {
  local name=$1 suite=$2 packages=$3 image=localhost/ms-base:$1
  local stamp=$work/$name.packages
  if podman image exists "$image" && [ "$(cat "$stamp" 2>/dev/null)" = "$suite $packages" ]; then
    return
  fi
  echo "image-test: mmdebstrap $suite ($packages)"
  mmdebstrap --variant=minbase --include="$packages" \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
    "$suite" "$work/$name.tar" ${MIRROR:+"$MIRROR"}
  podman import -q "$work/$name.tar" "$image" >/dev/null
  rm -f "$work/$name.tar"
  echo "$suite $packages" >"$stamp"
}
base build bullseye python3,python3-venv,gcc,libc6-dev,make,ca-certificates
base runtime bookworm python3,python3-venv,ca-certificates

# The Go toolchain as an image holding /usr/local/go.
goroot=$(go env GOROOT)
gover=$(go env GOVERSION)
goimage=localhost/ms-go:$gover
if ! podman image exists "$goimage"; then
  echo "image-test: importing $goroot as $goimage"
  tar -C "$(dirname "$goroot")" --transform "s,^$(basename "$goroot"),usr/local/go," \
    -cf - "$(basename "$goroot")" | podman import -q - "$goimage" >/dev/null
fi

# The host's CA bundle, for RUN steps that fetch packages: it holds whatever
# CA this machine's network needs (a TLS-intercepting proxy's, say).
ca=()
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  ca=(-v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro
      --build-arg PIP_CERT=/etc/ssl/certs/ca-certificates.crt)
fi
gomod=$(go env GOMODCACHE) gocache=$(go env GOCACHE)
mkdir -p "$gomod" "$gocache"
bud() {
  buildah bud --isolation chroot --network host --layers -f deploy/Dockerfile \
    --build-arg BUILD_IMAGE=localhost/ms-base:build --build-arg GO_IMAGE="$goimage" \
    --build-arg RUNTIME_IMAGE=localhost/ms-base:runtime "${ca[@]}" \
    -v "$gomod:/root/go/pkg/mod" -v "$gocache:/root/.cache/go-build" "$@" .
}
build_start=$(date +%s)
bud -t "$tag"
build_s=$(( $(date +%s) - build_start ))

# The wheel the build stage made (the same cached layers), checked as
# `make wheel` checks its own: auditwheel must measure the tag it carries.
make .venv/.wheel-tools
bud --target build -t "$tag-build"
rm -rf "$work/wheels"
ctr=$(podman create "$tag-build" true)
podman cp "$ctr:/wheels" "$work/wheels"
podman rm "$ctr" >/dev/null
bash ci/check-wheel.sh .venv/bin/python "$work"/wheels/model_streamer-*.whl

# The lean install outside the image, for the same pull: a venv without torch
# or numpy, holding cffi and the wheel of `make wheel`.
make wheel
lean=$work/venv-lean
rm -rf "$lean"
python3 -m venv "$lean"
"$lean/bin/pip" install -q "cffi>=1.15"
"$lean/bin/pip" install -q --no-deps dist/model_streamer-*.whl

python3 ci/image_test.py --image "$tag" --runtime-base localhost/ms-base:runtime \
  --lean "$lean" --mb "${IMAGE_TEST_MB:-1024}" --rounds "${IMAGE_TEST_ROUNDS:-2}" --build-seconds "$build_s" --out "$work/results.json"
echo "image-test: passed in $(( $(date +%s) - start )) s (image build $build_s s)"
