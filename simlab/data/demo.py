"""The built-in demo dataset: a small Holidays look-alike generated offline from bundled photos.

Source photos are the pictures shipped inside scikit-image's ``data`` folder and scikit-learn's sample
images; they are read straight from the installed packages, nothing is downloaded.

A *scene* (one group) is one region of one photo, and every view of it is cut from inside that region:
two scenes never share a pixel. The scenes of a photo are listed by hand, one thing a person recognises
each (the astronaut's face, the flag, the shuttle model), boxes apart by a margin, so a person shown two
groups agrees that they are different scenes; photos where every region looks alike (a retina, tissue,
coins, bricks, gravel, grass) give exactly one scene each. Each view is a strong but honest re-shoot of
its scene: zoom into part of it, a viewpoint (perspective) change, rotation (sometimes a 90 degree turn, like Holidays'
sideways photos), exposure, tone and white balance, a light gradient, blur or sensor noise, a plain
occluder entering from an edge (never a piece of another photo), and JPEG recompression. No view is
near-blank: each has a grey-level standard deviation of at least 12.

``manifest.csv`` beside the images lists every view: ``path,group,source,x0,y0,x1,y1``, the box of the
source photo (its pixels, x1 and y1 exclusive) the view was cut from; views of one scene stay inside its
region, so boxes of different groups from one photo never overlap.

Generation is deterministic (fixed seed, one random stream per view, whatever the threads), takes
seconds, and writes into a temporary folder renamed into place at the end, with a marker carrying
the generator version and settings: a killed run never leaves a half demo, a changed generator
regenerates. Bump ``GENERATOR_VERSION`` whenever a code change alters the images.
"""

from __future__ import annotations

import contextlib
import csv
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
from PIL import Image, ImageDraw, ImageFilter

from simlab.paths import cache_dir

GENERATOR_VERSION = "5"
SEED = 20170
MARKER = ".simlab-demo.json"
MANIFEST = "manifest.csv"
MANIFEST_COLUMNS = ("path", "group", "source", "x0", "y0", "x1", "y1")
FIRST_GROUP = 1000
MIN_GREY_STD = 12.0  # no view flatter than this (grey levels 0-255): nothing near-blank

# name -> (package, file inside it, its scenes). A photo of distinct things (a face, a flag, a shuttle model)
# lists its scenes by hand: a name and a box (x0, y0, x1, y1) around one thing a person would recognise,
# boxes of one photo apart by a margin. A photo where every region looks alike (a texture, tissue, coins,
# bricks) lists none: it gives exactly one scene, one informative region found at random.
Scenes = tuple[tuple[str, tuple[int, int, int, int]], ...]
PHOTOS: dict[str, tuple[str, str, Scenes]] = {
    "astronaut": ("skimage", "data/astronaut.png", (
        ("face", (150, 20, 300, 170)), ("flag", (0, 0, 100, 250)), ("shuttle model", (350, 0, 470, 280)),
        ("suit collar", (115, 178, 310, 295)), ("mission patch", (120, 330, 220, 430)),
        ("helmet", (280, 340, 512, 512)), ("sleeve", (0, 262, 110, 512)))),
    "camera": ("skimage", "data/camera.png", (
        ("head and camera", (150, 55, 330, 190)), ("skyline", (340, 100, 512, 240)),
        ("hands on the tripod", (160, 196, 335, 300)), ("tripod legs", (220, 306, 420, 512)))),
    "chelsea": ("skimage", "data/chelsea.png", (
        ("eye", (115, 65, 215, 165)), ("nose", (210, 195, 320, 285)))),
    "china": ("sklearn", "datasets/images/china.jpg", (
        ("pagoda roof", (90, 25, 325, 150)), ("pagoda base", (64, 252, 370, 400)),
        ("lake and island", (380, 200, 550, 290)), ("tall tree", (555, 130, 640, 420)),
        ("trees below", (380, 300, 550, 427)))),
    "coffee": ("skimage", "data/coffee.png", (
        ("crema", (175, 20, 410, 200)), ("cup handle", (195, 205, 305, 300)), ("spoon", (315, 205, 410, 330)),
        ("saucer rim", (0, 130, 170, 330)), ("table corner", (0, 0, 165, 120)))),
    "flower": ("sklearn", "datasets/images/flower.jpg", (("dahlia", (165, 85, 450, 365)),)),
    "motorcycle": ("skimage", "data/motorcycle_left.png", (
        ("engine", (330, 240, 480, 380)), ("front wheel", (500, 280, 690, 460)), ("headlight", (470, 100, 600, 200)),
        ("seat and bench", (40, 100, 290, 240)), ("cans on a shelf", (340, 0, 460, 140)),
        ("boxes", (610, 170, 741, 270)), ("wooden wall", (0, 0, 170, 95)))),
    "rocket": ("skimage", "data/rocket.jpg", (
        ("rocket nose", (270, 110, 365, 260)), ("launch pad lights", (280, 300, 480, 427)),
        ("launch tower", (0, 0, 95, 300)))),
    "retina": ("skimage", "data/retina.jpg", ()),
    "ihc": ("skimage", "data/ihc.png", ()),
    "coins": ("skimage", "data/coins.png", ()),
    "moon": ("skimage", "data/moon.png", ()),
    "cell": ("skimage", "data/cell.png", ()),
    "brick": ("skimage", "data/brick.png", ()),
    "gravel": ("skimage", "data/gravel.png", ()),
    "grass": ("skimage", "data/grass.png", ()),
}


@dataclass(frozen=True)
class Config:
    """Knobs of the generator."""

    n_groups: int = 400  # at most this many scenes (the photos give fewer: every one they list)
    size_probs: tuple[float, ...] = (0,) * 6 + (0.1, 0.1, 0.15, 0.15, 0.15, 0.1, 0.1, 0.1, 0.05)  # P(k views)
    region_px: tuple[int, int] = (120, 220)  # a texture's one scene: size (geometric mean of its sides)
    zoom: tuple[float, float] = (0.55, 1.0)  # side of the view window, as a fraction of the scene's
    perspective: float = 0.12  # corner jitter, as a fraction of the window size
    tilt_deg: float = 8.0  # in-plane rotation (std, degrees)
    p_turn: float = 0.10  # probability of a 90 degree turn
    p_occlude: float = 0.2  # probability of a plain occluder in front of the scene
    occlude_max: float = 0.2  # its largest share of the view's area
    exposure: float = 0.35  # std of log gain
    gamma: float = 0.3
    white_balance: float = 0.08  # std of log per-channel gain
    p_light: float = 0.3  # probability of a light gradient across the view
    p_blur: float = 0.3
    blur_max: float = 2.2
    p_noise: float = 0.3
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


def source_name(photo: str) -> str:
    """Where a photo comes from, as the manifest names it: ``package/file``."""
    package, rel, _ = PHOTOS[photo]
    return f"{package}/{rel}"


def available_photos() -> dict[str, tuple[np.ndarray, Scenes]]:
    """name -> (RGB array, its listed scenes), for the photos present on this install."""
    out = {}
    for name, (pkg, rel, scenes) in PHOTOS.items():
        try:
            out[name] = (_read_photo(pkg, rel), scenes)
        except (FileNotFoundError, OSError):
            continue
    return out


# --------------------------------------------------------------------------- scenes


def _grey(a: np.ndarray) -> np.ndarray:
    """Grey levels as Pillow's ``convert("L")`` makes them (ITU-R 601-2 luma)."""
    a = a.astype(np.float32)
    return a[..., 0] * 0.299 + a[..., 1] * 0.587 + a[..., 2] * 0.114


def _informative(img: np.ndarray, box) -> bool:
    """A scene worth photographing: contrast, not mostly black or white, and detail spread over most of it
    (at least 7 of its 3x3 cells), not a flat sky or a blurred background."""
    x, y, w, h = (int(round(v)) for v in box)
    patch = _grey(img[y:y + h:2, x:x + w:2])
    if patch.shape[0] < 6 or patch.shape[1] < 6:
        return False
    if float(patch.std()) < 24.0 or float((patch < 16).mean()) >= 0.4 or float((patch > 245).mean()) >= 0.4:
        return False
    grad = np.zeros_like(patch)
    grad[:-1] += np.abs(np.diff(patch, axis=0))
    grad[:, :-1] += np.abs(np.diff(patch, axis=1))
    if float(grad.mean()) < 5.0:
        return False
    H, W = grad.shape
    cells = [grad[i * H // 3:(i + 1) * H // 3, j * W // 3:(j + 1) * W // 3].mean() for i in range(3) for j in range(3)]
    return sum(c >= 3.0 for c in cells) >= 7


def _texture_region(img: np.ndarray, rng: np.random.Generator, cfg: Config) -> tuple | None:
    """One informative region (x, y, w, h) of a photo whose regions all look alike, or None."""
    H, W = img.shape[:2]
    lo, hi = cfg.region_px[0], max(cfg.region_px[0], min(cfg.region_px[1], 0.6 * min(H, W)))
    for _ in range(200):
        s = math.exp(rng.uniform(math.log(lo), math.log(hi)))
        aspect = math.exp(rng.uniform(-0.4, 0.4))
        w, h = round(min(s * math.sqrt(aspect), W - 1.0)), round(min(s / math.sqrt(aspect), H - 1.0))
        box = (int(rng.integers(0, W - w + 1)), int(rng.integers(0, H - h + 1)), w, h)
        if _informative(img, box):
            return box
    return None


@functools.lru_cache(maxsize=4)
def _scene_pool(region_px: tuple[int, int]) -> tuple[tuple[str, str, tuple], ...]:
    """Every scene the photos give, shuffled: (photo name, scene name, box x, y, w, h)."""
    cfg = dataclasses.replace(DEFAULT, region_px=region_px)
    photos = available_photos()
    if not photos:
        raise RuntimeError("no source photos found in scikit-image / scikit-learn")
    pool = []
    for name in sorted(photos):
        img, scenes = photos[name]
        if scenes:
            pool += [(name, label, (x0, y0, x1 - x0, y1 - y0)) for label, (x0, y0, x1, y1) in scenes]
            continue
        rng = np.random.default_rng([SEED, 1, zlib.crc32(name.encode())])  # stable if a photo is missing
        if (box := _texture_region(img, rng, cfg)) is not None:
            pool.append((name, name, box))
    order = np.random.default_rng([SEED, 2]).permutation(len(pool))
    return tuple(pool[j] for j in order)


def plan(cfg: Config = DEFAULT) -> list[dict]:
    """The scenes: one dict per group (photo, region box, number of views), in group-id order."""
    pool = _scene_pool(cfg.region_px)
    probs = np.asarray(cfg.size_probs, dtype=float)
    scenes = []
    for g, (name, label, box) in enumerate(pool[: cfg.n_groups]):
        r = np.random.default_rng([SEED, 3, g])
        scenes.append({"photo": name, "scene": label, "box": box, "group": FIRST_GROUP + g,
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


def _fit_quad(quad: np.ndarray, box) -> np.ndarray:
    """Shrink (about its centre) and move a quadrilateral until it lies inside ``box`` (x, y, w, h), one
    pixel in from its edges (bilinear sampling reads one pixel around each point)."""
    x, y, w, h = box
    lo_b, hi_b = np.array([x + 1.0, y + 1.0]), np.array([x + w - 2.0, y + h - 2.0])
    c = quad.mean(axis=0)
    span = quad.max(axis=0) - quad.min(axis=0)
    scale = min(1.0, (hi_b[0] - lo_b[0]) / span[0], (hi_b[1] - lo_b[1]) / span[1])
    quad = c + (quad - c) * scale
    lo, hi = quad.min(axis=0), quad.max(axis=0)
    return quad + np.maximum(lo_b - lo, 0) - np.maximum(hi - hi_b, 0)


def _occlude(view: Image.Image, rng: np.random.Generator, cfg: Config) -> None:
    """A plain shape (a pole, a shoulder, a thumb) entering the view from an edge, in one flat colour."""
    ow, oh = view.size
    area = rng.uniform(0.06, cfg.occlude_max) * ow * oh
    asp = math.exp(rng.uniform(-1.0, 1.0))
    pw, ph = min(ow, max(8, round(math.sqrt(area * asp)))), min(oh, max(8, round(math.sqrt(area / asp))))
    px = 0 if rng.random() < 0.5 else ow - pw
    py = int(rng.integers(0, oh - ph + 1))
    if rng.random() < 0.5:
        px, py = int(rng.integers(0, ow - pw + 1)), (0 if rng.random() < 0.5 else oh - ph)
    colour = tuple(int(v) for v in rng.integers(10, 90, size=3))
    draw = ImageDraw.Draw(view)
    shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
    shape([px, py, px + pw, py + ph], fill=colour)


def _light(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A light gradient across the view (a window on one side, a shadow on the other)."""
    oh, ow = a.shape[:2]
    phi = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:oh, 0:ow].astype(np.float32)
    ramp = (xx / ow - 0.5) * math.cos(phi) + (yy / oh - 0.5) * math.sin(phi)
    return a * (1.0 + float(rng.uniform(0.4, 0.9)) * ramp)[..., None]


def render_view(img: np.ndarray, box, rng: np.random.Generator, cfg: Config = DEFAULT,
                first: bool = False) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """One camera-like view of the scene ``box`` (x, y, w, h) of ``img``, cut from inside it, and the box
    (x0, y0, x1, y1; x1, y1 exclusive) of the photo it reads. The first view of a scene frames most of it."""
    x, y, w, h = box
    zoom = rng.uniform(0.85, 1.0) if first else rng.uniform(*cfg.zoom)
    aspect = math.exp(rng.uniform(-0.15, 0.15))
    vw, vh = min(w, w * zoom * math.sqrt(aspect)), min(h, h * zoom / math.sqrt(aspect))
    cx = x + vw / 2 + rng.uniform(0, w - vw)
    cy = y + vh / 2 + rng.uniform(0, h - vh)
    persp = cfg.perspective / 3 if first else cfg.perspective
    corners = np.array([[-vw / 2, -vh / 2], [vw / 2, -vh / 2], [vw / 2, vh / 2], [-vw / 2, vh / 2]])
    corners += rng.uniform(-persp, persp, size=(4, 2)) * np.array([vw, vh])
    tilt = cfg.tilt_deg / 3 if first else cfg.tilt_deg
    theta = math.radians(float(np.clip(rng.normal(0, tilt), -2.5 * tilt, 2.5 * tilt)))
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    quad = _fit_quad(corners @ rot.T + np.array([cx, cy]), box)

    long_side = int(rng.integers(cfg.long_side[0], cfg.long_side[1] + 1))
    ratio = vw / vh
    if ratio >= 1:
        ow, oh = long_side, max(8, round(long_side / ratio))
    else:
        ow, oh = max(8, round(long_side * ratio)), long_side
    dst = [(0, 0), (ow, 0), (ow, oh), (0, oh)]
    # only the part of the photo under the quad (and the pixel around it) is handed to Pillow
    x0, y0 = (int(v) - 1 for v in np.floor(quad.min(axis=0)))
    x1, y1 = (int(v) + 2 for v in np.ceil(quad.max(axis=0)))
    x0, y0 = max(x0, int(x)), max(y0, int(y))
    x1, y1 = min(x1, int(x + w), img.shape[1]), min(y1, int(y + h), img.shape[0])
    coeffs = _perspective_coeffs(dst, [(px - x0, py - y0) for px, py in quad])
    view = Image.fromarray(img[y0:y1, x0:x1]).transform((ow, oh), Image.Transform.PERSPECTIVE, coeffs,
                                                        Image.Resampling.BILINEAR)
    if not first and rng.random() < cfg.p_occlude:
        _occlude(view, rng, cfg)
    if rng.random() < cfg.p_blur:
        view = view.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, cfg.blur_max))))
    # exposure (gain), tone curve (gamma) and white balance: one lookup table per channel
    gamma = math.exp(rng.uniform(-cfg.gamma, cfg.gamma))
    gain = math.exp(float(np.clip(rng.normal(0, cfg.exposure), -2 * cfg.exposure, 2 * cfg.exposure)))
    wb = np.exp(np.clip(rng.normal(0, cfg.white_balance, size=3), -2.5 * cfg.white_balance, 2.5 * cfg.white_balance))
    levels = (np.arange(256) / 255.0) ** gamma * gain
    lut = np.clip(np.outer(wb, levels) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    view = view.point(lut.ravel().tolist())
    lit, noisy = rng.random() < cfg.p_light, rng.random() < cfg.p_noise
    if lit or noisy:
        a = np.asarray(view, dtype=np.float32)
        if lit:
            a = _light(a, rng)
        if noisy:
            a = a + rng.standard_normal((oh, ow, 3), dtype=np.float32) * float(rng.uniform(2.0, cfg.noise_max))
        view = Image.fromarray(np.clip(a + 0.5, 0, 255).astype(np.uint8))
    if rng.random() < cfg.p_turn:
        view = view.transpose(Image.Transpose.ROTATE_90 if rng.random() < 0.5 else Image.Transpose.ROTATE_270)
    return view, (x0, y0, x1, y1)


def grey_std(view: Image.Image) -> float:
    """Standard deviation of the view's grey levels (Pillow's ``L`` conversion)."""
    return float(np.asarray(view.convert("L"), dtype=np.float32).std())


def well_exposed(view: Image.Image, white: float = 0.0, black: float = 0.0) -> bool:
    """Contrast (grey-level std a margin over :data:`MIN_GREY_STD`, whatever the decoder) and little of the view
    blown out to white or crushed to black: at most a fifth more than the scene itself has (``white``,
    ``black``: its own shares), so a person can still see the scene in it."""
    grey = np.asarray(view.convert("L"), dtype=np.float32)
    return (float(grey.std()) >= MIN_GREY_STD + 1.0 and float((grey >= 250).mean()) <= white + 0.2
            and float((grey <= 5).mean()) <= black + 0.2)


def _encode(view: Image.Image, rng: np.random.Generator, cfg: Config) -> bytes:
    buf = io.BytesIO()
    q = int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1))
    view.save(buf, "JPEG", quality=q, optimize=False, progressive=False)
    return buf.getvalue()


def _render_scene(scene: dict, photos: dict, cfg: Config) -> list[tuple[str, bytes, tuple]]:
    """All views of one scene as (file name, JPEG bytes, box read); each view has its own random stream.
    A view that comes out near-blank or blown out (after blur, exposure, an occluder) is shot again from its
    stream (:func:`well_exposed`)."""
    img = photos[scene["photo"]][0]
    x, y, w, h = scene["box"]
    grey = _grey(img[y:y + h, x:x + w])
    white, black = float((grey >= 250).mean()), float((grey <= 5).mean())
    out = []
    for v in range(scene["n_views"]):
        rng = np.random.default_rng([SEED, 4, scene["group"], v])
        for attempt in range(20):
            view, read = render_view(img, scene["box"], rng, cfg, first=v == 0 or attempt >= 10)
            data = _encode(view, rng, cfg)
            with Image.open(io.BytesIO(data)) as written:
                if well_exposed(written, white, black):
                    break
        else:
            raise RuntimeError(f"demo scene {scene['group']} of {scene['photo']}: no view with contrast")
        out.append((f"{scene['group']:04d}{v:02d}.jpg", data, read))
    return out


def generate(target: str | os.PathLike, cfg: Config = DEFAULT, workers: int | None = None,
             progress=None) -> dict:
    """Write the demo images (Holidays names ``GGGGVV.jpg``) and ``manifest.csv`` into the folder ``target``;
    return stats.

    Threads share the work (Pillow and numpy release the GIL); the output does not depend on them.
    ``progress(done, total)``, when given, hears the images written so far.
    """
    t0 = time.perf_counter()
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    photos = available_photos()
    scenes = plan(cfg)
    sizes: dict[int, int] = {}
    rows = []
    workers = workers or min(4, os.cpu_count() or 1)
    total = sum(sc["n_views"] for sc in scenes)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for scene, files in zip(scenes, pool.map(lambda sc: _render_scene(sc, photos, cfg), scenes)):
            for name, data, read in files:
                (target / name).write_bytes(data)
                rows.append((name, f"{scene['group']:04d}", source_name(scene["photo"]), *read))
            if progress is not None:
                progress(len(rows), total)
            sizes[scene["n_views"]] = sizes.get(scene["n_views"], 0) + 1
    with open(target / MANIFEST, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(MANIFEST_COLUMNS)
        writer.writerows(rows)
    return {
        "version": GENERATOR_VERSION,
        "seed": SEED,
        "n_groups": len(scenes),
        "n_images": len(rows),
        "group_sizes": {str(k): v for k, v in sorted(sizes.items())},
        "photos": sorted({s["photo"] for s in scenes}),
        "seconds": round(time.perf_counter() - t0, 2),
    }


def read_manifest(folder: str | os.PathLike) -> list[dict]:
    """The rows of a demo folder's ``manifest.csv``: path (file name), group, source and the box read
    (``x0, y0, x1, y1`` as ints, in the source photo's pixels)."""
    with open(Path(folder) / MANIFEST, newline="") as f:
        return [{**row, **{k: int(row[k]) for k in ("x0", "y0", "x1", "y1")}} for row in csv.DictReader(f)]


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
