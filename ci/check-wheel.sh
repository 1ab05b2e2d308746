#!/usr/bin/env bash
# ci/check-wheel.sh PYTHON WHEEL: fails unless WHEEL is a manylinux wheel whose
# tag is the one `auditwheel show` measures from its library, and it holds the
# one shared library with the version the package declares.
set -euo pipefail
py=$1 whl=$2
name=$(basename "$whl")
case "$name" in
  *-py3-none-manylinux_*.whl) ;;
  *) echo "check-wheel: $name: not a py3-none-manylinux_* wheel" >&2; exit 1 ;;
esac
show=$("$py" -m auditwheel show "$whl" 2>&1) || { echo "$show" >&2; exit 1; }
echo "$show"
measured=$(tr -s "\n " "  " <<<"$show" | sed -n 's/.*consistent with the following platform tag: "\([^"]*\)".*/\1/p')
tag=${name%.whl}; tag=${tag##*-}
if [ -z "$measured" ] || [ "$measured" != "$tag" ]; then
  echo "check-wheel: $name is tagged $tag; auditwheel measures ${measured:-nothing}" >&2
  exit 1
fi
"$py" - "$whl" <<'PY'
import re, sys, zipfile
whl = sys.argv[1]
names = zipfile.ZipFile(whl).namelist()
libs = [n for n in names if n.endswith(".so")]
assert libs == ["runai_model_streamer/lib/libmodelstreamer.so"], f"shared libraries: {libs}"
version = re.search(r'__version__ = "([^"]+)"', zipfile.ZipFile(whl).read("runai_model_streamer/_version.py").decode()).group(1)
assert f"-{version}-" in whl.rsplit("/", 1)[-1], f"{whl}: file name does not carry version {version}"
print(f"check-wheel: ok: {len(names)} files, one library, version {version}")
PY
ls -l "$whl"
