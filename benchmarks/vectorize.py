"""Vectorisation speed: simlab's pipeline against the naive way and the forward pass alone.

For each backbone, on the same N photos (JPEG files on disk), three ways, interleaved in rounds
so that machine noise hits all three alike; the table shows each way's median images per second:

- ``simlab``: ``simlab.vectors.compute_vectors`` (files on disk -> vectors in memory, no cache);
- ``naive``: the 2017 study's way: ``keras.utils.load_img`` + resize per image, stack a batch in
  Python, ``model.predict`` per batch;
- ``limit``: the same model's compiled forward pass alone on a batch already in memory (no decode,
  no resize), same batch size: what the hardware can do.

    .venv/bin/python benchmarks/vectorize.py [--n 256] [--rounds 3] [--backbones a,b] [--json]

Random weights (speed does not depend on them); runs unchanged on a GPU machine.
"""

from __future__ import annotations

import sys
from pathlib import Path

# The repo root first; and not this folder, which Python puts first and whose script names
# (pages, grid, ...) would shadow the app's own modules.
sys.path[:] = [str(Path(__file__).resolve().parent.parent)] + [
    p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402

from benchmarks._common import emit, log, machine, make_photos, median, table, verdict  # noqa: E402

GOAL_LIMIT = 0.9
GOAL_NAIVE = 2.0
WAYS = ("simlab", "naive", "limit")


def _way_simlab(paths, backbone, batch_size):
    from simlab.vectors import compute_vectors

    vectors, errors = compute_vectors(paths, backbone, "random", batch_size=batch_size)
    assert not any(errors), [e for e in errors if e][:3]
    return vectors


def _way_naive(paths, backbone, batch_size):
    """The study's loop: load_img(target_size) squashes to a square, then predict per batch."""
    import keras
    import numpy as np

    from simlab.backbones import get_backbone
    from simlab.vectors import load_model

    bb = get_backbone(backbone)
    model, _ = load_model(backbone, "random")
    out = []
    for start in range(0, len(paths), batch_size):
        batch = [keras.utils.img_to_array(keras.utils.load_img(p, target_size=(bb.input_size, bb.input_size)))
                 for p in paths[start:start + batch_size]]
        x = bb.preprocess(np.stack(batch))
        out.append(model.predict(x, batch_size=batch_size, verbose=0))
    return np.concatenate(out)


def _way_limit(n, backbone, batch_size, batch):
    """The compiled forward pass on one in-memory uint8 batch, as many calls as the others make."""
    from simlab.vectors import load_model

    _, embed = load_model(backbone, "random")
    out = None
    for _ in range(-(-n // batch_size)):
        out = embed(batch)
    return out


def bench_backbone(backbone: str, paths: list[str], rounds: int, batch_size: int) -> dict:
    import numpy as np
    from keras import ops

    from simlab.backbones import get_backbone
    from simlab.data.images import load_for_model

    bb = get_backbone(backbone)
    n = len(paths)
    reps = [paths[i % n] for i in range(batch_size)]
    batch = ops.convert_to_tensor(np.stack([load_for_model(p, bb.input_size) for p in reps]))
    runs = {
        "simlab": lambda: _way_simlab(paths, backbone, batch_size),
        "naive": lambda: _way_naive(paths, backbone, batch_size),
        "limit": lambda: _way_limit(n, backbone, batch_size, batch),
    }
    # warm-up: build the model, trace the functions, fill the OS file cache
    _way_simlab(paths[:batch_size], backbone, batch_size)
    _way_naive(paths[:batch_size], backbone, batch_size)
    _way_limit(batch_size, backbone, batch_size, batch)
    times: dict[str, list[float]] = {w: [] for w in WAYS}
    cpu: dict[str, list[float]] = {w: [] for w in WAYS}
    for r in range(rounds):
        order = WAYS[r % 3:] + WAYS[:r % 3]  # rotate, so no way always runs first
        for way in order:
            t0, c0 = time.perf_counter(), time.process_time()
            runs[way]()
            times[way].append(time.perf_counter() - t0)
            cpu[way].append(time.process_time() - c0)
        log(f"  {backbone} round {r + 1}/{rounds}: " + ", ".join(f"{w} {n / times[w][-1]:.1f} img/s" for w in WAYS))
    rate = {w: n / median(times[w]) for w in WAYS}
    return {
        "backbone": backbone, "input_size": bb.input_size, "batch_size": batch_size, "images": n,
        **{f"{w}_img_s": round(rate[w], 2) for w in WAYS},
        "simlab/limit": round(rate["simlab"] / rate["limit"], 3),
        "simlab/naive": round(rate["simlab"] / rate["naive"], 3),
        # CPU time of this process (all threads) per image: the work done, whatever the machine's load
        **{f"{w}_cpu_ms_img": round(1000 * median(cpu[w]) / n, 1) for w in WAYS},
        "rounds_s": {w: [round(t, 3) for t in times[w]] for w in WAYS},
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=256, help="photos (default 256)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds; medians are reported")
    ap.add_argument("--backbones", default="efficientnet_lite0,resnet50")
    ap.add_argument("--batch-size", type=int, default=None, help="default: simlab's own choice for the device")
    ap.add_argument("--images", default=None, help="a folder of JPEGs to use instead of generated photos")
    ap.add_argument("--long-side", default="500-1000", metavar="LO-HI",
                    help="long side of the generated photos in px (default 500-1000; camera photos: 2000-3300)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)

    if args.images:
        paths = sorted(str(p) for p in Path(args.images).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
        paths = paths[:args.n]
    else:
        lo, hi = (int(v) for v in args.long_side.split("-"))
        paths = make_photos(args.n, lo=lo, hi=hi)
    from simlab.vectors import default_batch_size

    batch_size = args.batch_size or default_batch_size()
    info = machine()
    log(f"vectorize benchmark: {len(paths)} photos, batch {batch_size}, {args.rounds} rounds, {info['device']}")
    results = [bench_backbone(b, paths, args.rounds, batch_size) for b in args.backbones.split(",")]
    goals = {r["backbone"]: {"simlab/limit>=0.9": r["simlab/limit"] >= GOAL_LIMIT,
                             "simlab/naive>=2": r["simlab/naive"] >= GOAL_NAIVE} for r in results}
    import keras
    from PIL import Image

    sizes = sorted(max(Image.open(p).size) for p in paths)
    photos = {"source": args.images or "generated", "long_side_px": [sizes[0], sizes[len(sizes) // 2], sizes[-1]],
              "mean_kb": round(sum(os.path.getsize(p) for p in paths) / len(paths) / 1024, 1)}
    from simlab.vectors import decode_mode, decode_workers

    decode = f"{decode_workers()} {decode_mode()}"
    out = {"benchmark": "vectorize", "images": len(paths), "photos": photos, "keras_backend": keras.config.backend(),
           "decode": decode,
           "rounds": args.rounds, "batch_size": batch_size,
           "machine": info, "results": results, "goals": goals}
    rows = [{"backbone": r["backbone"], "simlab img/s": r["simlab_img_s"], "naive img/s": r["naive_img_s"],
             "limit img/s": r["limit_img_s"], "simlab/limit": r["simlab/limit"],
             "simlab/naive": r["simlab/naive"],
             "cpu ms/img (simlab, naive, limit)": f"{r['simlab_cpu_ms_img']}, {r['naive_cpu_ms_img']}, "
                                                  f"{r['limit_cpu_ms_img']}",
             "goals (>=0.9, >=2)": f"{verdict(goals[r['backbone']]['simlab/limit>=0.9'])}, "
                                   f"{verdict(goals[r['backbone']]['simlab/naive>=2'])}"} for r in results]
    text = (f"Vectorisation: {len(paths)} JPEGs (long side min/median/max {photos['long_side_px']} px, "
            f"{photos['mean_kb']} kB on average), batch {batch_size}, Keras on {out['keras_backend']}, "
            f"decoding in {decode}{' (CPU column: this process only)' if 'processes' in decode else ''}, "
            f"median of {args.rounds} interleaved rounds "
            f"({info['device']}, load {info.get('load_avg')})\n\n" + table(rows, floatfmt="{:.2f}"))
    emit(out, args.json, text)
    return out


if __name__ == "__main__":
    main()
