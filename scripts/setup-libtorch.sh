#!/usr/bin/env bash
# Makes libtorch 2.13.0 (the version tch 0.26 expects) available to the build without
# pytorch.org: it is assembled from PyPI wheels into a cache outside the checkout and
# linked at ./.libtorch, which .cargo/config.toml points LIBTORCH at. Idempotent: a
# matching build-version file means there is nothing to do.
#
#   scripts/setup-libtorch.sh          CPU build (default): ~540 MB download, ~400 MB on disk
#   scripts/setup-libtorch.sh cuda     CUDA build: the full torch wheel and its CUDA wheels
#                                      (~2.7 GB download, ~4.7 GB on disk)
#
# CPU recipe: take include/, share/ and libtorch_cpu.so, libc10.so, libgomp.so.1 from the
# torch wheel, libcudart.so.13 and libcupti.so.13 from the NVIDIA runtime wheels
# (libtorch_cpu.so needs both even on CPU), strip libtorch_cpu.so, and make libtorch.so
# a link to libtorch_cpu.so because torch-sys always links -ltorch.
set -euo pipefail
VERSION=2.13.0
VARIANT="${1:-cpu}"
case "$VARIANT" in cpu|cuda) ;; *) echo "usage: $0 [cpu|cuda]" >&2; exit 2 ;; esac
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${TESSERA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tessera}"
DEST="$CACHE/libtorch-$VERSION-$VARIANT"
LINK="$ROOT/.libtorch"

if [ "$(cat "$DEST/build-version" 2>/dev/null)" = "$VERSION" ]; then
  ln -sfn "$DEST" "$LINK"
  exit 0
fi

PY="$(command -v python3 || command -v python)" || { echo "error: python3 with pip is needed to fetch the torch wheel from PyPI" >&2; exit 1; }
WORK="$(mktemp -d "$CACHE.work.XXXXXX" 2>/dev/null || { mkdir -p "$CACHE" && mktemp -d "$CACHE/work.XXXXXX"; })"
trap 'rm -rf "$WORK"' EXIT
echo "setting up libtorch $VERSION ($VARIANT) in $DEST" >&2

if [ "$VARIANT" = cpu ]; then
  "$PY" -m pip download --quiet --no-deps --only-binary=:all: \
    -d "$WORK/wheels" "torch==$VERSION" "nvidia-cuda-runtime==13.0.96.*" "nvidia-cuda-cupti==13.0.85.*"
  mkdir -p "$WORK/unpacked" "$WORK/out/lib"
  for w in "$WORK"/wheels/*.whl; do "$PY" -m zipfile -e "$w" "$WORK/unpacked"; done
  T="$WORK/unpacked/torch"
  cp -r "$T/include" "$T/share" "$WORK/out/"
  cp "$T/lib/libtorch_cpu.so" "$T/lib/libc10.so" "$T/lib/libgomp.so.1" "$WORK/out/lib/"
  find "$WORK/unpacked" \( -name 'libcudart.so.13*' -o -name 'libcupti.so.13*' \) -exec cp {} "$WORK/out/lib/" \;
  for lib in libcudart.so.13 libcupti.so.13; do
    [ -e "$WORK/out/lib/$lib" ] || { echo "error: $lib not found in the NVIDIA wheels" >&2; exit 1; }
  done
  strip --strip-unneeded "$WORK/out/lib/libtorch_cpu.so"
  ln -s libtorch_cpu.so "$WORK/out/lib/libtorch.so"
else
  "$PY" -m pip install --quiet --target "$WORK/site" "torch==$VERSION"
  mv "$WORK/site/torch" "$WORK/out"
  # the CUDA libraries live in the nvidia/* packages next to torch
  mkdir -p "$WORK/out/lib"
  find "$WORK/site/nvidia" -name '*.so*' -exec cp -n {} "$WORK/out/lib/" \;
fi
echo "$VERSION" > "$WORK/out/build-version"
rm -rf "$DEST"
mkdir -p "$(dirname "$DEST")"
mv "$WORK/out" "$DEST"
ln -sfn "$DEST" "$LINK"
echo "libtorch $VERSION ($VARIANT) ready at $LINK" >&2
