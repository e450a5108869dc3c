"""Vectorisation speed: simlab's pipeline against the naive way and the forward pass alone, for
each decoder, and several backbones fed from one decode against one after another.

For each backbone, on the same N photos (JPEG files on disk), these ways, interleaved in rounds
so that machine noise hits all alike; the table shows each way's median images per second:

- ``simlab[DECODER]``: ``simlab.vectors.compute_many`` for this backbone with that decoder (files
  on disk -> vectors in memory, no cache), one column per decoder of ``--decoders``;
- ``naive``: the 2017 study's way: ``keras.utils.load_img`` + resize per image, stack a batch in
  Python, ``model.predict`` per batch;
- ``limit``: the same model's compiled forward pass alone on a batch already in memory (no decode,
  no resize), same batch size: what the hardware can do.

Then, per decoder, the multi-backbone row: every backbone of ``--multi`` from one decode of each
photo (``compute_many`` with all of them) against the same backbones one after another (one
``compute_many`` each, as separate runs did), interleaved too; the ratio is measured in that run.
``decodes/img`` counts the decodes made (Pillow makes one per JPEG draft scale the sizes need).

    .venv/bin/python benchmarks/vectorize.py [--n 256] [--rounds 3] [--backbones a,b] [--multi a,b,c]
        [--decoders pillow,nvimgcodec] [--json]

Random weights (speed does not depend on them); runs unchanged on a GPU machine. A decoder that
cannot run here is left out, with the reason in the output.
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
GOAL_MULTI = 3.0  # 5 backbones from one decode against one after another, on a GPU
OTHER_WAYS = ("naive", "limit")


def _way_simlab(paths, backbones, batch_size, decoder):
    """``compute_many`` over these backbones, one decode of each photo; its DecodeStats."""
    from simlab.vectors import Job, compute_many

    results, stats = compute_many(paths, [Job(b, "random") for b in backbones], batch_size=batch_size,
                                  decoder=decoder)
    for _, errors in results:
        assert not any(errors), [e for e in errors if e][:3]
    return stats


def _way_apart(paths, backbones, batch_size, decoder):
    """The same backbones one after another, each decoding every photo itself."""
    return [_way_simlab(paths, [b], batch_size, decoder) for b in backbones]


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


def _rounds(runs: dict, rounds: int, n: int, label: str) -> tuple[dict, dict, dict]:
    """Each way once per round, the order rotated; times, CPU times and each way's last answer."""
    ways = list(runs)
    times: dict[str, list[float]] = {w: [] for w in ways}
    cpu: dict[str, list[float]] = {w: [] for w in ways}
    last: dict = {}
    for r in range(rounds):
        k = r % len(ways)
        for way in ways[k:] + ways[:k]:  # rotate, so no way always runs first
            t0, c0 = time.perf_counter(), time.process_time()
            last[way] = runs[way]()
            times[way].append(time.perf_counter() - t0)
            cpu[way].append(time.process_time() - c0)
        log(f"  {label} round {r + 1}/{rounds}: " + ", ".join(f"{w} {n / times[w][-1]:.1f} img/s" for w in ways))
    return times, cpu, last


def bench_backbone(backbone: str, paths: list[str], rounds: int, batch_size: int, decoders: list) -> dict:
    import numpy as np
    from keras import ops

    from simlab.backbones import get_backbone
    from simlab.data.images import load_for_model

    bb = get_backbone(backbone)
    n = len(paths)
    reps = [paths[i % n] for i in range(batch_size)]
    batch = ops.convert_to_tensor(np.stack([load_for_model(p, bb.input_size) for p in reps]))
    runs = {f"simlab[{d.name}]": (lambda d=d: _way_simlab(paths, [backbone], batch_size, d)) for d in decoders}
    runs |= {"naive": lambda: _way_naive(paths, backbone, batch_size),
             "limit": lambda: _way_limit(n, backbone, batch_size, batch)}
    # warm-up: build the model, trace the functions, fill the OS file cache
    for d in decoders:
        _way_simlab(paths[:batch_size], [backbone], batch_size, d)
    _way_naive(paths[:batch_size], backbone, batch_size)
    _way_limit(batch_size, backbone, batch_size, batch)
    times, cpu, last = _rounds(runs, rounds, n, backbone)
    rate = {w: n / median(t) for w, t in times.items()}
    per_decoder = {}
    for d in decoders:
        w = f"simlab[{d.name}]"
        per_decoder[d.name] = {"img_s": round(rate[w], 2), "simlab/limit": round(rate[w] / rate["limit"], 3),
                               "simlab/naive": round(rate[w] / rate["naive"], 3),
                               "decodes_per_image": round(last[w].decodes_per_image, 3),
                               "fallbacks": last[w].fallbacks, "cpu_ms_img": round(1000 * median(cpu[w]) / n, 1)}
    return {
        "backbone": backbone, "input_size": bb.input_size, "batch_size": batch_size, "images": n,
        "decoders": per_decoder,
        **{f"{w}_img_s": round(rate[w], 2) for w in OTHER_WAYS},
        # CPU time of this process (all threads) per image: the work done, whatever the machine's load
        **{f"{w}_cpu_ms_img": round(1000 * median(cpu[w]) / n, 1) for w in OTHER_WAYS},
        "rounds_s": {w: [round(t, 3) for t in ts] for w, ts in times.items()},
    }


def bench_multi(backbones: list[str], paths: list[str], rounds: int, batch_size: int, decoder) -> dict:
    """All ``backbones`` from one decode of each photo against one after another, same decoder."""
    n = len(paths)
    runs = {"one decode": lambda: _way_simlab(paths, backbones, batch_size, decoder),
            "one after another": lambda: _way_apart(paths, backbones, batch_size, decoder)}
    _way_apart(paths[:batch_size], backbones, batch_size, decoder)  # warm-up: every model built and traced
    _way_simlab(paths[:batch_size], backbones, batch_size, decoder)
    times, cpu, last = _rounds(runs, rounds, n, f"{len(backbones)} backbones [{decoder.name}]")
    one, apart = median(times["one decode"]), median(times["one after another"])
    return {"decoder": decoder.name, "backbones": backbones, "images": n, "batch_size": batch_size,
            "one_decode_s": round(one, 3), "one_after_another_s": round(apart, 3),
            "one_decode_img_s": round(n / one, 2), "one_after_another_img_s": round(n / apart, 2),
            "speedup": round(apart / one, 3),
            "decodes_per_image": {"one decode": round(last["one decode"].decodes_per_image, 3),
                                  "one after another": round(sum(s.decodes for s in last["one after another"]) / n,
                                                             3)},
            "cpu_s": {w: round(median(c), 2) for w, c in cpu.items()},
            "rounds_s": {w: [round(t, 3) for t in ts] for w, ts in times.items()}}


def _decoders(names: str) -> tuple[list, dict]:
    """The decoders asked for that can run here, and every one's description or why it cannot."""
    from simlab.vectors import DecoderUnavailable, choose_decoder

    usable, about = [], {}
    for name in [x.strip() for x in names.split(",") if x.strip()]:
        try:
            d = choose_decoder(name)
        except DecoderUnavailable as exc:
            about[name] = f"not run: {exc}"
            log(f"decoder {name}: {about[name]}")
            continue
        usable.append(d)
        about[name] = d.describe()
    if not usable:
        raise SystemExit("none of the decoders asked for can run here: " + "; ".join(about.values()))
    return usable, about


def _row_key(result: dict, decoder: str) -> str:
    return f"{result['backbone']} [{decoder}]"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=256, help="photos (default 256)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds; medians are reported")
    ap.add_argument("--backbones", default="efficientnet_lite0,resnet50")
    ap.add_argument("--multi", default=None, metavar="A,B,...",
                    help="backbones of the multi-backbone row (default: --backbones; 'none' to skip it)")
    ap.add_argument("--decoders", default="pillow,nvimgcodec",
                    help="decoders to compare (default pillow,nvimgcodec; those that cannot run here are left out)")
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
    decoders, about = _decoders(args.decoders)
    info = machine()
    log(f"vectorize benchmark: {len(paths)} photos, batch {batch_size}, {args.rounds} rounds, {info['device']}, "
        f"decoders {', '.join(d.name for d in decoders)}")
    backbones = [b for b in args.backbones.split(",") if b]
    results = [bench_backbone(b, paths, args.rounds, batch_size, decoders) for b in backbones]
    multi_backbones = [] if args.multi == "none" else [b for b in (args.multi or args.backbones).split(",") if b]
    multi = [bench_multi(multi_backbones, paths, args.rounds, batch_size, d) for d in decoders] \
        if len(multi_backbones) > 1 else []
    goals = {_row_key(r, d): {"simlab/limit>=0.9": v["simlab/limit"] >= GOAL_LIMIT,
                                        "simlab/naive>=2": v["simlab/naive"] >= GOAL_NAIVE}
             for r in results for d, v in r["decoders"].items()}
    goals |= {f"{len(m['backbones'])} backbones [{m['decoder']}]": {"speedup>=3": m["speedup"] >= GOAL_MULTI}
              for m in multi}
    import keras
    from PIL import Image

    sizes = sorted(max(Image.open(p).size) for p in paths)
    photos = {"source": args.images or "generated", "long_side_px": [sizes[0], sizes[len(sizes) // 2], sizes[-1]],
              "mean_kb": round(sum(os.path.getsize(p) for p in paths) / len(paths) / 1024, 1)}
    from simlab.vectors import decode_mode, decode_workers

    decode = f"{decode_workers()} {decode_mode()}"
    out = {"benchmark": "vectorize", "images": len(paths), "photos": photos, "keras_backend": keras.config.backend(),
           "decode": decode, "decoders": about,
           "rounds": args.rounds, "batch_size": batch_size,
           "machine": info, "results": results, "multi": multi, "goals": goals}
    rows = [{"backbone": r["backbone"], "decoder": d, "simlab img/s": v["img_s"], "naive img/s": r["naive_img_s"],
             "limit img/s": r["limit_img_s"], "simlab/limit": v["simlab/limit"], "simlab/naive": v["simlab/naive"],
             "decodes/img": v["decodes_per_image"],
             "cpu ms/img (simlab, naive, limit)": f"{v['cpu_ms_img']}, {r['naive_cpu_ms_img']}, "
                                                  f"{r['limit_cpu_ms_img']}",
             "goals (>=0.9, >=2)": ", ".join(verdict(ok) for ok in goals[_row_key(r, d)].values())}
            for r in results for d, v in r["decoders"].items()]
    multi_rows = [{"backbones": "+".join(m["backbones"]), "decoder": m["decoder"],
                   "one decode img/s": m["one_decode_img_s"], "one after another img/s": m["one_after_another_img_s"],
                   "speedup": m["speedup"],
                   "decodes/img (one, apart)": f"{m['decodes_per_image']['one decode']}, "
                                               f"{m['decodes_per_image']['one after another']}"} for m in multi]
    text = (f"Vectorisation: {len(paths)} JPEGs (long side min/median/max {photos['long_side_px']} px, "
            f"{photos['mean_kb']} kB on average), batch {batch_size}, Keras on {out['keras_backend']}, "
            f"decoders: {'; '.join(f'{k}: {v}' for k, v in about.items())}"
            f"{' (CPU column: this process only)' if 'processes' in decode else ''}, "
            f"median of {args.rounds} interleaved rounds "
            f"({info['device']}, load {info.get('load_avg')})\n\n" + table(rows, floatfmt="{:.2f}")
            + ("\n\nSeveral backbones (img/s: photos per second through all of them)\n\n"
               + table(multi_rows, floatfmt="{:.2f}") if multi_rows else ""))
    emit(out, args.json, text)
    return out


if __name__ == "__main__":
    main()
