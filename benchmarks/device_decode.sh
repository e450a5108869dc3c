#!/usr/bin/env bash
# The decoders on a GPU machine, in one run: a check that nvImageCodec is chosen there and hands the
# Keras backend (JAX) device arrays close to Pillow's, then benchmarks/vectorize.py --json with both
# decoders (Lite0, ResNet50) and the multi-backbone row (5 backbones from one decode against one after
# another). Wheels: benchmarks/device_wheels.sh, run first where pip has an index; on the device tool,
# carry .whl and run:  bash benchmarks/device_decode.sh   (about 6-9 minutes; results under $OUT).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/device-decode}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
export PYTHONPATH=/tmp/site:$PWD KERAS_BACKEND=jax PYTHONUNBUFFERED=1 SIMLAB_CACHE=/tmp/simlab-cache
export LD_LIBRARY_PATH=/tmp/site/nvidia/cu13/lib:/tmp/site/nvidia/nvimgcodec:${LD_LIBRARY_PATH:-}  # nvJPEG (cu13 wheel layout)
N=${N:-1024} ROUNDS=${ROUNDS:-3}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"

timeout 120 python3 - <<'PY' 2>&1 | tee "$OUT/check.txt"
import numpy as np
from keras import ops
from benchmarks._common import make_photos
from simlab.vectors import DECODERS, Job, choose_decoder, compute_many
from simlab.vectors.nvimgcodec import nvimgcodec_batches

paths = make_photos(64)
chosen = choose_decoder()
print("chosen without SIMLAB_DECODE:", chosen.name, chosen.describe())
batch = next(nvimgcodec_batches(paths[:8], [(224,)] * 8, "crop", 8))
x = batch.images[224]
print("batch type:", type(x).__name__, "devices:", getattr(x, "devices", lambda: "?")(), "fallbacks:", batch.fallbacks)
jobs = [Job("efficientnet_lite0", "random"), Job("phash", "random")]
(nv, nv_hash), s1 = compute_many(paths, jobs, batch_size=32, decoder=DECODERS["nvimgcodec"])
(pil, pil_hash), s2 = compute_many(paths, jobs, batch_size=32, decoder=DECODERS["pillow"])
cos = (nv[0] * pil[0]).sum(1) / np.linalg.norm(nv[0], axis=1) / np.linalg.norm(pil[0], axis=1)
print("errors equal:", nv[1] == pil[1], "| Lite0 cosine nvimgcodec vs pillow: min", cos.min(), "median", np.median(cos))
print("phash bits that differ: max", int((nv_hash[0] != pil_hash[0]).sum(1).max()), "of 64")
print("decode stats:", s1, s2)
PY

timeout 420 python3 benchmarks/vectorize.py --json --n "$N" --rounds "$ROUNDS" \
    --backbones efficientnet_lite0,resnet50 --decoders pillow,nvimgcodec \
    --multi efficientnet_lite0,resnet50,vgg16,inceptionv3,xception \
    > "$OUT/vectorize.json" 2> "$OUT/vectorize.log"
echo "vectorize.py exit $?"; tail -30 "$OUT/vectorize.log"
