"""How sharp are the similarity maps? A photo against a crop of itself: the map of the full photo should be warm
inside the crop's box.

For ``--n`` seeded crops (a photo of the folder, a box of half its width and half its height at a seeded place),
``simlab.explain.explain_pair(full photo, crop)`` is checked and scored:

- ``grid_a`` and ``grid_b`` each sum to the score (the pair's cosine) within 1e-3;
- the share of the above-average mass of ``map_a`` (the full photo; its mean subtracted, negatives dropped) that
  lies inside the crop's box (the box covers a quarter of the photo), per ``detail`` (``native``: the 7 x 7 grid
  upsampled; ``views``: sharpened by local views, simlab's default).

    .venv/bin/python benchmarks/explain_crops.py --photos ../shared/evalsets/realworld --n 12 --json

The settings were chosen on other photos (scikit-image's and scikit-learn's samples and the demo dataset's), never
on the folder measured here.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from simlab.data.images import open_rgb  # noqa: E402
from simlab.explain import DETAILS, explain_pair  # noqa: E402

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}


def photos_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def box_share(map_a: np.ndarray, box: tuple[int, int, int, int]) -> float:
    """The share of the map's above-average mass inside ``box`` (left, top, right, bottom)."""
    above = np.clip(map_a - map_a.mean(), 0.0, None)
    left, top, right, bottom = box
    total = float(above.sum())
    return float(above[top:bottom, left:right].sum()) / total if total > 0 else 0.0


def crops(photos: list[Path], n: int, seed: int):
    """``n`` (photo, full image, box, crop): seeded photos and boxes of half the width and half the height."""
    rng = np.random.default_rng(seed)
    for k in rng.choice(len(photos), size=min(n, len(photos)), replace=False):
        full = open_rgb(photos[k])
        w, h = full.size
        cw, ch = w // 2, h // 2
        left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        box = (left, top, left + cw, top + ch)
        yield photos[k], full, box, full.crop(box)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--photos", default="../shared/evalsets/realworld", help="a folder of photos (searched deeply)")
    p.add_argument("--n", type=int, default=12, help="crops")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    photos = photos_in(Path(args.photos))
    if not photos:
        print(f"error: no photos in {args.photos}", file=sys.stderr)
        return 2
    rows = []
    for path, full, box, crop in crops(photos, args.n, args.seed):
        row = {"photo": path.name, "size": list(full.size), "box": list(box)}
        for detail in DETAILS:
            start = time.perf_counter()
            e = explain_pair(full, crop, args.backbone, detail=detail)
            row[detail] = box_share(e.map_a, box)
            row[f"{detail}_s"] = time.perf_counter() - start
            row["score"] = e.score
            row["sum_error"] = max(abs(float(e.grid_a.sum()) - e.score), abs(float(e.grid_b.sum()) - e.score))
        rows.append(row)
        if not args.json:
            print(f"{path.name:28s} score {row['score']:.3f}  " + "  ".join(f"{d} {row[d]:.3f}" for d in DETAILS),
                  flush=True)
    summary = {"photos": str(args.photos), "crops": len(rows), "seed": args.seed, "backbone": args.backbone,
               "max_sum_error": max(r["sum_error"] for r in rows),
               "sums_within_1e-3": all(r["sum_error"] < 1e-3 for r in rows),
               **{f"share_{d}": float(np.mean([r[d] for r in rows])) for d in DETAILS},
               **{f"seconds_{d}": float(np.mean([r[f"{d}_s"] for r in rows])) for d in DETAILS}}
    if args.json:
        print(json.dumps({"summary": summary, "rows": rows}))
    else:
        print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
