#!/usr/bin/env bash
# Build libcufft.so.11 (the forwarding shim in cufft_shim.c) into DIR (default ./.gl/lib).
# Usage: bash tools/gpu/build_cufft_shim.sh [DIR]; then put DIR on LD_LIBRARY_PATH.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-.gl/lib}"
mkdir -p "$out"
gcc -shared -fPIC -O2 -Wl,-soname,libcufft.so.11 -Wl,--version-script="$here/cufft.map" \
    -o "$out/libcufft.so.11" "$here/cufft_shim.c" -ldl
echo "$out/libcufft.so.11"
