#!/bin/bash
# Packs FFCV for a GPU machine that has torch, numba, numpy and OpenCV's Python package for CPython 3.12 but not
# the OpenCV and libjpeg-turbo libraries FFCV's C extension links, nor a way to fetch them: FFCV 1.0.2 and
# pipelines/_jpeg_window built here for CPython 3.12, the shared libraries the two extensions load (their ldd
# closure, less glibc, libstdc++, libgcc and zlib, which any such machine has), and a stand-in for distutils.log,
# which ffcv/pipeline/graph.py imports and Python 3.12 dropped. One xz tar, .gpu/ffcv/ffcv.tar.xz (about 8 MB);
# measure_gpu.sh unpacks it there.
#   bash docs/device/pack_ffcv.sh          # from the repo root, with the apt libraries of `make setup` and a
#                                          # python3.12 on PATH (or PY312=...); about 20 s
set -euo pipefail
cd "$(dirname "$0")/../.."
PY312=${PY312:-python3.12}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/pack/site" "$work/pack/lib" "$work/pack/ext" "$work/pack/distutils_stub/distutils" .gpu/ffcv
"$PY312" -m pip wheel -q --no-deps -w "$work/wheels" ffcv==1.0.2 .
"$PY312" -m pip install -q --no-deps --no-compile --target "$work/pack/site" "$work"/wheels/ffcv-*.whl
unzip -q -j -d "$work/pack/ext" "$work"/wheels/neatt-*.whl 'pipelines/_jpeg_window.cpython-312-*.so'
for so in "$work"/pack/site/ffcv/_libffcv*.so "$work"/pack/ext/*.so; do
    ldd "$so" | awk '/=> \// {print $3}'
done | sort -u | grep -vE '/(libc|libm|libstdc\+\+|libgcc_s|libz|libpthread|libdl|librt|ld-linux[^/]*)\.so' \
    | xargs -I{} cp -L {} "$work/pack/lib/"
touch "$work/pack/distutils_stub/distutils/__init__.py"
cat > "$work/pack/distutils_stub/distutils/log.py" <<'EOF'
"""distutils.log's warn, all that ffcv 1.0.2 takes from distutils (removed in Python 3.12)."""
import logging


def warn(msg, *args):
    logging.getLogger("ffcv").warning(msg, *args)
EOF
tar -C "$work/pack" -cf - . | xz -T2 -9 > .gpu/ffcv/ffcv.tar.xz
ls -l .gpu/ffcv/ffcv.tar.xz
tar -tJf .gpu/ffcv/ffcv.tar.xz | grep -E '\.so' | sed 's/^/  /'
