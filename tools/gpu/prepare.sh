#!/usr/bin/env bash
# Run here (a machine with PyPI), before a session's device run: fetch what the GPU machine lacks
# and stage the images its checks read. Both folders are git-ignored and travel with `carry`:
#   .whl/  astra-toolbox 2.5.0 (cp312) and nvidia-cuda-runtime-cu12 wheels (~18 MB)
#   .gpu/  copies of ../shared/data/{set5,set12,train400} (~11 MB; ../shared does not travel)
set -euo pipefail
cd "$(dirname "$0")/../.."
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl astra-toolbox==2.5.0 nvidia-cuda-runtime-cu12==12.9.79
mkdir -p .gpu/data
for d in set5 set12 train400; do
    rm -rf ".gpu/data/$d" && cp -r "../shared/data/$d" ".gpu/data/$d"
done
du -sh .whl .gpu
