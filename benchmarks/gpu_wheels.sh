#!/usr/bin/env bash
# Fetch, here, the wheels the GPU machine lacks for gpu.py's scan row (libsndfile, soxr, FFmpeg for
# M4A) into .whl/ (git ignores it; name it in the device tool's carry): CPython 3.12, x86-64.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=${1:-.whl}
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$dest" \
    soundfile==0.14.0 cffi==2.1.1 pycparser==3.0 soxr==1.1.0 av==18.1.0
ls -l "$dest"/*.whl && du -ch "$dest"/*.whl | tail -1
