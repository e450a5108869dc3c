"""The built-in demo dataset: a small Holidays look-alike generated offline from bundled photos.

Source photos are the colour (and a few grayscale) pictures shipped inside scikit-image's
``data`` folder and scikit-learn's sample images; they are read straight from the installed
packages, nothing is downloaded. A *scene* (one group) is a region of one photo; several scenes
come from different, slightly overlapping regions of the same photo (hard negatives). Each view of
a scene is a camera-like re-shoot: crop/zoom jitter, a small viewpoint (perspective) change,
rotation (sometimes a 90 degree turn, like Holidays' sideways photos), exposure and white-balance
shifts, blur or sensor noise, and JPEG recompression.

Generation is deterministic (fixed seed, one random stream per view, whatever the threads), takes
seconds, and writes into a temporary folder renamed into place at the end, with a marker carrying
the generator version and settings: a killed run never leaves a half demo, a changed generator
regenerates. Bump ``GENERATOR_VERSION`` whenever a code change alters the images.

Calibration (EfficientNet-Lite0 ImageNet vectors at 224 px, all positive pairs within groups plus
as many random cross-group negatives, 70/30 group split, 10 seeds): cosine similarity with a
threshold tuned on train 0.926 (0.89-0.95); logistic regression on standardised elementwise products
of L2-normalised vectors 0.930 (0.90-0.96), on |a-b| 0.926; random forest 0.88. Holidays-like: well
below 1, most errors are strongly changed views and scenes cut from the same photo.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import importlib.util
import io
import json
import math
import os
import shutil
import tempfile
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from simlab.paths import cache_dir

GENERATOR_VERSION = "3"
SEED = 20170
MARKER = ".simlab-demo.json"
FIRST_GROUP = 1000

# name -> (package, file inside it, alternate view of the same scene or None, weight).
# A photo yields at most ``per_photo * weight`` scenes (fewer when no more regions fit).
# motorcycle_left/right is a stereo pair: both are views of the same scenes, never two scenes.
PHOTOS: dict[str, tuple[str, str, str | None, float]] = {
    "astronaut": ("skimage", "data/astronaut.png", None, 1.0),
    "chelsea": ("skimage", "data/chelsea.png", None, 1.0),
    "coffee": ("skimage", "data/coffee.png", None, 1.0),
    "rocket": ("skimage", "data/rocket.jpg", None, 1.0),
    "motorcycle": ("skimage", "data/motorcycle_left.png", "data/motorcycle_right.png", 1.0),
    "hubble_deep_field": ("skimage", "data/hubble_deep_field.jpg", None, 1.0),
    "retina": ("skimage", "data/retina.jpg", None, 1.0),
    "ihc": ("skimage", "data/ihc.png", None, 1.0),
    "china": ("sklearn", "datasets/images/china.jpg", None, 1.0),
    "flower": ("sklearn", "datasets/images/flower.jpg", None, 1.0),
    "camera": ("skimage", "data/camera.png", None, 1.0),
    "coins": ("skimage", "data/coins.png", None, 1.0),
    "moon": ("skimage", "data/moon.png", None, 1.0),
    "cell": ("skimage", "data/cell.png", None, 1.0),
    "brick": ("skimage", "data/brick.png", None, 0.5),
    "gravel": ("skimage", "data/gravel.png", None, 0.5),
}


@dataclass(frozen=True)
class Config:
    """Knobs of the generator (the defaults are the calibrated ones: see the module docstring)."""

    n_groups: int = 300
    size_probs: tuple[float, ...] = (0.0, 0.0, 0.40, 0.30, 0.18, 0.12)  # P(group has k views), k = 0..5
    region_px: tuple[int, int] = (90, 240)  # scene size (geometric mean of its sides), pixels of the photo
    region_max_frac: float = 0.7  # ... and at most this fraction of the photo's short side
    max_overlap: float = 0.40  # intersection / smaller area, between two scenes of one photo
    per_photo: float = 40  # most scenes taken from one photo, times its weight
    zoom: float = 0.28  # log-uniform zoom jitter of the view window
    shift: float = 0.12  # window shift, as a fraction of its size
    tilt_deg: float = 6.0  # small in-plane rotation (std, degrees)
    perspective: float = 0.08  # corner jitter, as a fraction of the window size
    p_turn: float = 0.10  # probability of a 90 degree turn
    p_occlude: float = 0.12  # probability of an occluder (a patch of another photo) in front of the scene
    occlude_max: float = 0.2  # its largest share of the view's area
    exposure: float = 0.35  # std of log gain
    gamma: float = 0.25
    white_balance: float = 0.07  # std of log per-channel gain
    p_blur: float = 0.35
    blur_max: float = 2.2
    p_noise: float = 0.35
    noise_max: float = 10.0
    jpeg_quality: tuple[int, int] = (30, 95)
    long_side: tuple[int, int] = (320, 640)


DEFAULT = Config()


# --------------------------------------------------------------------------- source photos


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {name} is not installed")
    return Path(list(spec.submodule_search_locations)[0])


_photo_cache: dict[str, np.ndarray] = {}


def _read_photo(package: str, rel: str) -> np.ndarray:
    key = f"{package}/{rel}"
    if key not in _photo_cache:
        with Image.open(_package_dir(package) / rel) as im:
            _photo_cache[key] = np.asarray(im.convert("RGB"))
    return _photo_cache[key]


def available_photos() -> dict[str, tuple[np.ndarray, np.ndarray | None, float]]:
    """name -> (RGB array, alternate view or None, weight), for the photos present on this install."""
    out = {}
    for name, (pkg, rel, alt, weight) in PHOTOS.items():
        try:
            img = _read_photo(pkg, rel)
            alt_img = _read_photo(pkg, alt) if alt else None
        except (FileNotFoundError, OSError):
            continue
        out[name] = (img, alt_img, weight)
    return out


# --------------------------------------------------------------------------- scenes


def _max_overlap(box, boxes: np.ndarray) -> float:
    """Largest intersection / smaller area between ``box`` and the rows (x, y, w, h) of ``boxes``."""
    if not len(boxes):
        return 0.0
    ax, ay, aw, ah = box
    bx, by, bw, bh = boxes.T
    iw = np.maximum(0.0, np.minimum(ax + aw, bx + bw) - np.maximum(ax, bx))
    ih = np.maximum(0.0, np.minimum(ay + ah, by + bh) - np.maximum(ay, by))
    return float((iw * ih / np.minimum(aw * ah, bw * bh)).max())


def _informative(img: np.ndarray, box) -> bool:
    """A scene worth photographing: contrast, not mostly black, and detail spread over most of it
    (at least 6 of its 3x3 cells), not a flat sky or a blurred background."""
    x, y, w, h = (int(round(v)) for v in box)
    patch = img[y:y + h:2, x:x + w:2].astype(np.float32).mean(axis=2)
    if patch.shape[0] < 6 or patch.shape[1] < 6:
        return False
    if float(patch.std()) < 12.0 or float((patch < 12).mean()) >= 0.5:
        return False
    grad = np.zeros_like(patch)
    grad[:-1] += np.abs(np.diff(patch, axis=0))
    grad[:, :-1] += np.abs(np.diff(patch, axis=1))
    if float(grad.mean()) < 4.5:
        return False
    H, W = grad.shape
    cells = [grad[i * H // 3:(i + 1) * H // 3, j * W // 3:(j + 1) * W // 3].mean() for i in range(3) for j in range(3)]
    return sum(c >= 3.0 for c in cells) >= 6


def _regions(img: np.ndarray, count: int, rng: np.random.Generator, cfg: Config) -> list[tuple]:
    H, W = img.shape[:2]
    short = min(H, W)
    boxes: list[tuple] = []
    for _ in range(count * 60):
        if len(boxes) >= count:
            break
        s = rng.uniform(cfg.region_px[0], max(cfg.region_px[0], min(cfg.region_px[1], short * cfg.region_max_frac)))
        aspect = math.exp(rng.uniform(-0.45, 0.45))
        w, h = s * math.sqrt(aspect), s / math.sqrt(aspect)
        w, h = min(w, W * 0.95), min(h, H * 0.95)
        x, y = rng.uniform(0, W - w), rng.uniform(0, H - h)
        box = (x, y, w, h)
        overlap = _max_overlap(box, np.asarray(boxes, dtype=float).reshape(-1, 4))
        if overlap <= cfg.max_overlap and _informative(img, box):
            boxes.append(box)
    return boxes


@functools.lru_cache(maxsize=4)
def _scene_pool(region_px, region_max_frac, max_overlap, per_photo) -> tuple[tuple[str, tuple], ...]:
    """Every scene region the photos yield, shuffled: (photo name, box). Cached: it is the slow part."""
    cfg = dataclasses.replace(DEFAULT, region_px=region_px, region_max_frac=region_max_frac,
                              max_overlap=max_overlap, per_photo=per_photo)
    photos = available_photos()
    if not photos:
        raise RuntimeError("no source photos found in scikit-image / scikit-learn")
    pool = []
    for name in sorted(photos):
        img, _, weight = photos[name]
        quota = max(1, round(cfg.per_photo * weight))
        rng = np.random.default_rng([SEED, 1, zlib.crc32(name.encode())])  # stable if a photo is missing
        pool += [(name, tuple(float(v) for v in box)) for box in _regions(img, quota, rng, cfg)]
    order = np.random.default_rng([SEED, 2]).permutation(len(pool))
    return tuple(pool[j] for j in order)


def plan(cfg: Config = DEFAULT) -> list[dict]:
    """The scenes: one dict per group (photo, region box, number of views), in group-id order."""
    pool = _scene_pool(cfg.region_px, cfg.region_max_frac, cfg.max_overlap, cfg.per_photo)
    probs = np.asarray(cfg.size_probs, dtype=float)
    scenes = []
    for g, (name, box) in enumerate(pool[: cfg.n_groups]):
        r = np.random.default_rng([SEED, 3, g])
        scenes.append({"photo": name, "box": box, "group": FIRST_GROUP + g,
                       "n_views": int(r.choice(len(probs), p=probs / probs.sum()))})
    return scenes


# --------------------------------------------------------------------------- views


def _perspective_coeffs(dst, src) -> list[float]:
    """Coefficients for PIL's PERSPECTIVE transform mapping output points ``dst`` to input ``src``."""
    A, b = [], []
    for (x, y), (u, v) in zip(dst, src):
        A.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        A.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        b += [u, v]
    return np.linalg.solve(np.asarray(A, float), np.asarray(b, float)).tolist()


def _fit_quad(quad: np.ndarray, W: int, H: int) -> np.ndarray:
    """Shrink (about its centre) and move a quadrilateral until it lies inside the photo."""
    c = quad.mean(axis=0)
    span = quad.max(axis=0) - quad.min(axis=0)
    scale = min(1.0, (W - 1) / span[0], (H - 1) / span[1])
    quad = c + (quad - c) * scale
    lo, hi = quad.min(axis=0), quad.max(axis=0)
    shift = np.maximum(0 - lo, 0) - np.maximum(hi - np.array([W - 1, H - 1]), 0)
    return quad + shift


def render_view(img: np.ndarray, box, rng: np.random.Generator, cfg: Config = DEFAULT,
                occluder: np.ndarray | None = None) -> Image.Image:
    """One camera-like view of the scene ``box`` (x, y, w, h) of ``img``."""
    H, W = img.shape[:2]
    x, y, w, h = box
    zoom = math.exp(rng.uniform(-cfg.zoom, cfg.zoom))
    aspect = math.exp(rng.uniform(-0.12, 0.12))
    vw, vh = w * zoom * math.sqrt(aspect), h * zoom / math.sqrt(aspect)
    cx = x + w / 2 + rng.uniform(-cfg.shift, cfg.shift) * w
    cy = y + h / 2 + rng.uniform(-cfg.shift, cfg.shift) * h
    corners = np.array([[-vw / 2, -vh / 2], [vw / 2, -vh / 2], [vw / 2, vh / 2], [-vw / 2, vh / 2]])
    corners += rng.uniform(-cfg.perspective, cfg.perspective, size=(4, 2)) * np.array([vw, vh])
    theta = math.radians(float(np.clip(rng.normal(0, cfg.tilt_deg), -2.5 * cfg.tilt_deg, 2.5 * cfg.tilt_deg)))
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    quad = _fit_quad(corners @ rot.T + np.array([cx, cy]), W, H)

    long_side = int(rng.integers(cfg.long_side[0], cfg.long_side[1] + 1))
    ratio = vw / vh
    if ratio >= 1:
        ow, oh = long_side, max(8, round(long_side / ratio))
    else:
        ow, oh = max(8, round(long_side * ratio)), long_side
    dst = [(0, 0), (ow, 0), (ow, oh), (0, oh)]
    # only the part of the photo under the quad is handed to Pillow
    x0, y0 = (int(v) for v in np.floor(quad.min(axis=0)))
    x1, y1 = (int(v) + 2 for v in np.ceil(quad.max(axis=0)))
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(W, x1), min(H, y1)
    coeffs = _perspective_coeffs(dst, [(px - x0, py - y0) for px, py in quad])
    view = Image.fromarray(img[y0:y1, x0:x1]).transform((ow, oh), Image.Transform.PERSPECTIVE, coeffs,
                                                        Image.Resampling.BILINEAR)

    if occluder is not None and rng.random() < cfg.p_occlude:
        area = rng.uniform(0.08, cfg.occlude_max) * ow * oh
        asp = math.exp(rng.uniform(-0.8, 0.8))
        pw, ph = min(ow, max(8, round(math.sqrt(area * asp)))), min(oh, max(8, round(math.sqrt(area / asp))))
        oy = int(rng.integers(0, occluder.shape[0] - min(ph, occluder.shape[0]) + 1))
        ox = int(rng.integers(0, occluder.shape[1] - min(pw, occluder.shape[1]) + 1))
        patch = Image.fromarray(occluder[oy:oy + ph, ox:ox + pw]).resize((pw, ph))
        # occluders enter from an edge, like a passer-by or a branch in front of the camera
        px = 0 if rng.random() < 0.5 else ow - pw
        py = int(rng.integers(0, oh - ph + 1))
        if rng.random() < 0.5:
            px, py = int(rng.integers(0, ow - pw + 1)), (0 if rng.random() < 0.5 else oh - ph)
        view.paste(patch, (px, py))

    if rng.random() < cfg.p_blur:
        view = view.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, cfg.blur_max))))
    # exposure (gain), tone curve (gamma) and white balance: one lookup table per channel
    gamma = math.exp(rng.uniform(-cfg.gamma, cfg.gamma))
    gain = math.exp(float(np.clip(rng.normal(0, cfg.exposure), -2 * cfg.exposure, 2 * cfg.exposure)))
    wb = np.exp(np.clip(rng.normal(0, cfg.white_balance, size=3), -2.5 * cfg.white_balance, 2.5 * cfg.white_balance))
    levels = (np.arange(256) / 255.0) ** gamma * gain
    lut = np.clip(np.outer(wb, levels) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    view = view.point(lut.ravel().tolist())
    if rng.random() < cfg.p_noise:
        sigma = float(rng.uniform(2.0, cfg.noise_max))
        a = np.asarray(view, dtype=np.float32) + rng.standard_normal((oh, ow, 3), dtype=np.float32) * sigma
        view = Image.fromarray(np.clip(a + 0.5, 0, 255).astype(np.uint8))
    if rng.random() < cfg.p_turn:
        view = view.transpose(Image.Transpose.ROTATE_90 if rng.random() < 0.5 else Image.Transpose.ROTATE_270)
    return view


def _encode(view: Image.Image, rng: np.random.Generator, cfg: Config) -> bytes:
    buf = io.BytesIO()
    q = int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1))
    view.save(buf, "JPEG", quality=q, optimize=False, progressive=False)
    return buf.getvalue()


def _render_scene(scene: dict, photos: dict, cfg: Config) -> list[tuple[str, bytes]]:
    """All views of one scene as (file name, JPEG bytes); each view has its own random stream."""
    names = sorted(photos)
    img, alt, _ = photos[scene["photo"]]
    out = []
    for v in range(scene["n_views"]):
        rng = np.random.default_rng([SEED, 4, scene["group"], v])
        src = alt if alt is not None and rng.random() < 0.5 else img
        other = names[int(rng.integers(len(names)))]
        view = render_view(src, scene["box"], rng, cfg, occluder=photos[other][0])
        out.append((f"{scene['group']:04d}{v:02d}.jpg", _encode(view, rng, cfg)))
    return out


def generate(target: str | os.PathLike, cfg: Config = DEFAULT, workers: int | None = None,
             progress=None) -> dict:
    """Write the demo images (Holidays names ``GGGGVV.jpg``) into the folder ``target``; return stats.

    Threads share the work (Pillow and numpy release the GIL); the output does not depend on them.
    ``progress(done, total)``, when given, hears the images written so far.
    """
    t0 = time.perf_counter()
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    photos = available_photos()
    scenes = plan(cfg)
    sizes: dict[int, int] = {}
    n_images = 0
    workers = workers or min(4, os.cpu_count() or 1)
    total = sum(sc["n_views"] for sc in scenes)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for scene, files in zip(scenes, pool.map(lambda sc: _render_scene(sc, photos, cfg), scenes)):
            for name, data in files:
                (target / name).write_bytes(data)
            n_images += len(files)
            if progress is not None:
                progress(n_images, total)
            sizes[scene["n_views"]] = sizes.get(scene["n_views"], 0) + 1
    return {
        "version": GENERATOR_VERSION,
        "seed": SEED,
        "n_groups": len(scenes),
        "n_images": n_images,
        "group_sizes": {str(k): v for k, v in sorted(sizes.items())},
        "photos": sorted({s["photo"] for s in scenes}),
        "seconds": round(time.perf_counter() - t0, 2),
    }


def config_key(cfg: Config = DEFAULT) -> str:
    """Identifies what a generation produces: generator version, seed and knobs."""
    text = f"{GENERATOR_VERSION}|{SEED}|{sorted(PHOTOS.items())}|{dataclasses.astuple(cfg)}"
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def _marker_ok(folder: Path, cfg: Config = DEFAULT) -> bool:
    try:
        info = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return info.get("version") == GENERATOR_VERSION and info.get("config") == config_key(cfg)


def demo_dir() -> Path:
    return cache_dir("datasets") / "demo"


_lock = threading.Lock()


def _remove_stale_temps(parent: Path, older_than_s: float = 3600) -> None:
    """Temp folders of generations killed mid-way (a live one is never an hour old)."""
    now = time.time()
    for p in parent.glob(".demo-*"):
        with contextlib.suppress(OSError):
            if p.is_dir() and now - p.stat().st_mtime > older_than_s:
                shutil.rmtree(p, ignore_errors=True)


def ensure_demo(cfg: Config = DEFAULT, progress=None) -> Path:
    """The demo folder (Holidays layout), generated on first use or when the generator changed.
    ``progress(done, total)`` hears the images of a generation (see :func:`generate`)."""
    target = demo_dir()
    if _marker_ok(target, cfg):
        return target
    with _lock:  # one generation per process; other processes may race, the rename settles it
        if _marker_ok(target, cfg):
            return target
        parent = target.parent
        _remove_stale_temps(parent)
        tmp = Path(tempfile.mkdtemp(prefix=".demo-", dir=parent))
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the demo is an ordinary folder
        try:
            stats = generate(tmp, cfg, progress=progress)
            stats["config"] = config_key(cfg)
            (tmp / MARKER).write_text(json.dumps(stats, indent=1))
            if _marker_ok(target, cfg):  # another process finished first
                return target
            if target.exists():
                old = Path(tempfile.mkdtemp(prefix=".demo-old-", dir=parent))
                os.replace(target, old / "demo")
                shutil.rmtree(old, ignore_errors=True)
            try:
                os.replace(tmp, target)
            except OSError:
                if not _marker_ok(target, cfg):
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target


def demo_stats() -> dict:
    """The stats written by the last generation (group count, sizes, time)."""
    with contextlib.suppress(OSError, ValueError):
        return json.loads((ensure_demo() / MARKER).read_text())
    return {}
