#!/usr/bin/env bash
# Installs the object-storage servers the tests run against into <repo>/.tools:
#
#   .tools/bin/minio             MinIO (S3)          go install, pinned below
#   .tools/bin/fake-gcs-server   fake-gcs-server     go install, pinned below
#   .tools/azurite/              Azurite (Azure)     npm install, pinned below
#   /usr/sbin/nginx              nginx (HTTP(S))     apt-get install nginx-light
#
# Idempotent: each server is skipped when its version stamp
# (.tools/stamps/<name>) already names the pinned version and the binary is
# there, so a warm run takes well under a second. Go builds use the normal Go
# module and build caches; set GOCACHE/GOMODCACHE to measure a fresh install.
#
# Packages come from the Go module proxy, the npm registry and, for nginx,
# the system's apt sources (Debian's nginx-light: a static file server with
# byte ranges and TLS, nothing more). nginx is a system package, not a file
# under .tools: installing it needs root (or sudo) on a Debian-like system,
# and an nginx already on PATH (or at /usr/sbin/nginx) is used as it is.
#
# Usage: ci/install-servers.sh [minio|fake-gcs|azurite|nginx ...]   (default: all)
set -euo pipefail

# MinIO has no semver tags on the module proxy, only pseudo-versions of its
# master branch. This one (2026-02-12, go.mod "go 1.24.0", the newest the
# proxy has) has no replace directives, so `go install pkg@version` accepts
# it, and it builds and runs with Go 1.26 (go1.26.8 here). Its build is the
# slow part of a fresh install: about 5.5 CPU-minutes of compiling its
# large dependency tree, plus downloads (the module cache for both Go tools
# came to ~1.9 GB). The newest pseudo-version built, so no older one was
# tried. In CI, cache .tools (keyed on this file's hash) and the Go caches.
MINIO_VERSION="v0.0.0-20260212201848-7aac2a2c5b7c"
# fake-gcs-server: newest release (go.mod "go 1.26"); builds with Go 1.26.
# About 2.5 CPU-minutes to compile from a cold build cache.
FAKE_GCS_VERSION="v1.56.1"
# Azurite 3.36+ declares engines node >= 21/22; 3.35.0 is the newest whose
# engines admit Node 20 (node >= 10). npm resolves its dependencies within
# the ranges its package.json gives (it ships no lock file). ~30 s.
AZURITE_VERSION="3.35.0"

# Measured on a 2-vCPU machine that other builds kept at load 15-20: a
# fresh install (empty module, build and npm caches) took 22 min of wall
# time and 8 CPU-minutes (Azurite 31 s, fake-gcs-server 8 min, MinIO 13 min
# wall); with the module cache warm, compiling alone took 4.7 min wall /
# 2.5 CPU-min (fake-gcs-server) and 8.4 min wall / 5.5 CPU-min (MinIO). A
# run with everything installed takes ~0.03 s.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="${MODEL_STREAMER_TOOLS:-$ROOT/.tools}"
BIN="$TOOLS/bin"
STAMPS="$TOOLS/stamps"
GO="${GO:-go}"
NPM="${NPM:-npm}"
mkdir -p "$BIN" "$STAMPS"

log() { printf 'install-servers: %s\n' "$*"; }

# installed NAME VERSION FILE: the stamp says VERSION and FILE exists.
installed() {
	[[ -f "$STAMPS/$1" && "$(cat "$STAMPS/$1")" == "$2" && -e "$3" ]]
}

# go_tool NAME PKG VERSION BINARY
go_tool() {
	local name=$1 pkg=$2 version=$3 bin=$4
	if installed "$name" "$version" "$BIN/$bin"; then
		log "$name $version already installed ($BIN/$bin)"
		return
	fi
	log "installing $name: GOBIN=$BIN $GO install $pkg@$version"
	local start=$SECONDS
	# Build outside the repository's module so its go.mod plays no part;
	# CGO off gives a static binary and needs no C toolchain.
	(cd "$TOOLS" && GOBIN="$BIN" CGO_ENABLED=0 GOFLAGS=-buildvcs=false GOWORK=off \
		"$GO" install -trimpath "$pkg@$version")
	echo "$version" >"$STAMPS/$name"
	log "installed $name $version in $((SECONDS - start))s"
}

install_minio() {
	go_tool minio github.com/minio/minio "$MINIO_VERSION" minio
}

install_fake_gcs() {
	go_tool fake-gcs-server github.com/fsouza/fake-gcs-server "$FAKE_GCS_VERSION" fake-gcs-server
}

install_azurite() {
	local dir="$TOOLS/azurite"
	local main="$dir/node_modules/azurite/dist/src/blob/main.js"
	if installed azurite "$AZURITE_VERSION" "$main"; then
		log "azurite $AZURITE_VERSION already installed ($dir)"
		return
	fi
	if ! command -v node >/dev/null; then
		log "node is not installed: Azurite needs Node.js 20 or newer" >&2
		return 1
	fi
	log "installing azurite: $NPM install --prefix $dir azurite@$AZURITE_VERSION (node $(node --version))"
	local start=$SECONDS
	mkdir -p "$dir"
	"$NPM" install --prefix "$dir" --no-audit --no-fund --no-save --omit=dev \
		--loglevel=error "azurite@$AZURITE_VERSION"
	if [[ ! -f "$main" ]]; then
		log "azurite installed but $main is missing" >&2
		return 1
	fi
	echo "$AZURITE_VERSION" >"$STAMPS/azurite"
	log "installed azurite $AZURITE_VERSION in $((SECONDS - start))s"
}

install_nginx() {
	local have
	have=$(command -v nginx || true)
	[[ -n "$have" ]] || { [[ -x /usr/sbin/nginx ]] && have=/usr/sbin/nginx; }
	if [[ -n "$have" ]]; then
		log "nginx already installed ($have)"
		return
	fi
	if ! command -v apt-get >/dev/null; then
		log "nginx is not installed and apt-get is missing: install nginx (with the ssl module) by other means" >&2
		return 1
	fi
	local sudo=()
	if [[ $(id -u) -ne 0 ]]; then
		command -v sudo >/dev/null || { log "installing nginx-light needs root or sudo" >&2; return 1; }
		sudo=(sudo)
	fi
	log "installing nginx: apt-get install nginx-light"
	local start=$SECONDS
	# The package's own service is not wanted (the tests start their own
	# nginx on a free loopback port): policy-rc.d exit 101 keeps
	# invoke-rc.d from starting it on port 80, where no init system would.
	local policy=/usr/sbin/policy-rc.d made_policy=0
	if [[ ! -e $policy ]]; then
		printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
		"${sudo[@]}" chmod 755 "$policy"
		made_policy=1
	fi
	# An update only when the package lists are missing or too old to
	# know the package (a fresh container has none).
	local rc=0
	if ! apt-cache show nginx-light >/dev/null 2>&1; then
		"${sudo[@]}" apt-get update -q || rc=$?
	fi
	if [[ $rc -eq 0 ]]; then
		DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q --no-install-recommends nginx-light || rc=$?
	fi
	if [[ $made_policy -eq 1 ]]; then "${sudo[@]}" rm -f "$policy"; fi
	if [[ $rc -ne 0 ]]; then
		log "apt-get failed (status $rc): nginx-light is not installed" >&2
		return "$rc"
	fi
	log "installed nginx ($(/usr/sbin/nginx -v 2>&1)) in $((SECONDS - start))s"
}

targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(minio fake-gcs azurite nginx)
for t in "${targets[@]}"; do
	case "$t" in
	minio) install_minio ;;
	fake-gcs | fake-gcs-server) install_fake_gcs ;;
	azurite) install_azurite ;;
	nginx) install_nginx ;;
	*)
		log "unknown server $t (want minio, fake-gcs, azurite or nginx)" >&2
		exit 2
		;;
	esac
done
log "done: tools in $TOOLS"
