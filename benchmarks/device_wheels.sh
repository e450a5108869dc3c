#!/usr/bin/env bash
# Fetch, on a machine with pip and an index, the wheels benchmarks/device_decode.sh installs on a GPU machine
# that has Python 3.12, JAX with CUDA 13, numpy, Pillow and scikit-learn but no package index:
# Keras (and the two of its needs that are not there) and nvImageCodec with nvJPEG (requirements-gpu.txt).
# They land in .whl/ (git-ignored), about 35 MB.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP=${PIP:-.venv/bin/python -m pip}
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
$PIP download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" -d .whl \
    keras==3.15.1 namex==0.1.0 optree==0.20.0 \
    nvidia-nvimgcodec-cu13==0.9.0.20 nvidia-nvjpeg==13.0.4.44
ls -la .whl
