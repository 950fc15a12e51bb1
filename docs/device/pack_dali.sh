#!/bin/bash
# Packs DALI for a GPU machine that has torch (CUDA 13) but no internet and takes at most 64 MiB per transfer:
# the dev venv's DALI, with the nvImageCodec, nvJPEG, nvJPEG2000 and nvTIFF libraries it loads, as an xz tar split
# into parts of 60 MiB (.gpu/dali/part.*), and cp312 wheels of its small Python dependencies (.gpu/dali/whl).
# Only the CPython 3.11/3.12 extension modules are kept. measure_gpu.sh unpacks it there.
#   bash docs/device/pack_dali.sh          # from the repo root, after `make setup`; about 3 minutes on 2 cores
set -euo pipefail
cd "$(dirname "$0")/../.."
SP=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
mkdir -p .gpu/dali/whl
rm -f .gpu/dali/part.*
tar -C "$SP" -cf - --exclude='__pycache__' --exclude='*/include' \
    --exclude='*.cpython-3[0-9]-*' --exclude='*.cpython-3[0-9]t-*' \
    --exclude='*.cpython-31[03-9]-*' --exclude='*.cpython-31[0-9]t-*' \
    nvidia/dali nvidia/nvimgcodec nvidia/nvjpeg2k nvidia/nvtiff nvidia/cu13/lib/libnvjpeg.so.13 \
    | xz -T2 -9 | split -b 60M - .gpu/dali/part.
for pkg in astunparse gast libcst makefun nvtx optree; do  # DALI's dependencies that the device image lacks
    spec="$pkg==$(.venv/bin/python -c "import importlib.metadata as m; print(m.version('$pkg'))")"
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .gpu/dali/whl "$spec"
done
ls -l .gpu/dali/part.* .gpu/dali/whl
