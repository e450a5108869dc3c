"""Reading images safely: validation, RGB conversion, model-ready arrays and cached thumbnails.

Everything here works on one file at a time and is safe to call from threads.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import re
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from simlab.paths import atomic_path, cache_dir

#: Images with more pixels than this are refused as decompression bombs (read at call time,
#: so a test may lower it). Pillow's own limit is set to the same value; Pillow only raises
#: beyond twice its limit, below that we refuse ourselves (its warning is silenced, not lost).
MAX_PIXELS = 120_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

THUMB_MAX = 256
_THUMB_VERSION = "1"
_JPEG_FORMATS = {"JPEG", "MPO"}


class ImageError(ValueError):
    """A file that cannot be used as an image; ``str(err)`` is the reason shown to the user."""


def _bomb_error(pixels: int) -> ImageError:
    return ImageError(f"decompression bomb ({pixels} pixels)")


def _open(src: str | os.PathLike | BinaryIO) -> Image.Image:
    """Open lazily (header only) and refuse what is not an image or is too large."""
    try:
        im = Image.open(src)
    except FileNotFoundError:
        raise ImageError("file not found") from None
    except PermissionError:
        raise ImageError("unreadable (permission denied)") from None
    except IsADirectoryError:
        raise ImageError("not a file") from None
    except Image.DecompressionBombError as e:
        m = re.search(r"\((\d+) pixels\)", str(e))
        raise _bomb_error(int(m.group(1)) if m else 0) from None
    except UnidentifiedImageError:
        raise ImageError("not an image") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageError(_decode_reason(e)) from None
    w, h = im.size
    if w <= 0 or h <= 0:
        raise ImageError("not an image (empty dimensions)")
    if w * h > MAX_PIXELS:
        im.close()
        raise _bomb_error(w * h)
    return im


def _decode_reason(e: BaseException) -> str:
    msg = str(e)
    low = msg.lower()
    if isinstance(e, EOFError) or "truncated" in low or "broken data stream" in low or "end of file" in low:
        return "truncated"
    if isinstance(e, Image.DecompressionBombError):
        m = re.search(r"\((\d+) pixels\)", msg)
        return f"decompression bomb ({m.group(1) if m else '?'} pixels)"
    return f"corrupt image ({msg[:120] or type(e).__name__})"


def _load(im: Image.Image) -> None:
    try:
        im.load()
    except Image.DecompressionBombError as e:
        raise ImageError(_decode_reason(e)) from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as e:
        raise ImageError(_decode_reason(e)) from None


def _check_open(src: str | os.PathLike | BinaryIO) -> None:
    im = _open(src)
    try:
        if im.format in _JPEG_FORMATS:
            # DCT scaling skips most of the IDCT work but still entropy-decodes every byte,
            # so a truncated stream is still detected.
            im.draft(im.mode, (max(1, im.size[0] // 8), max(1, im.size[1] // 8)))
        _load(im)
    finally:
        im.close()


def check_image(path: str | os.PathLike) -> None:
    """Raise :class:`ImageError` unless ``path`` is a complete, decodable, reasonably sized image.

    Reasons: ``zero-byte file``, ``not an image``, ``truncated``, ``decompression bomb (N pixels)``,
    ``corrupt image (...)``, ``file not found``.
    """
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        raise ImageError("file not found") from None
    except OSError as e:
        raise ImageError(f"unreadable ({e.strerror or e})") from None
    if size == 0:
        raise ImageError("zero-byte file")
    _check_open(path)


def check_image_bytes(data: bytes) -> None:
    """:func:`check_image` for file contents already read (the dataset loader reads once)."""
    if not data:
        raise ImageError("zero-byte file")
    _check_open(io.BytesIO(data))


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB. Alpha is composited on white; 16/32-bit is rescaled."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        mode = im.mode
        if mode == "RGB":
            return im
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    if mode.startswith("I;16") or mode in ("I", "F"):
        a = np.asarray(im)
        if a.dtype.kind == "f":
            a = np.nan_to_num(a.astype(np.float64))
            lo, hi = float(a.min()), float(a.max())
            a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
        elif mode.startswith("I;16") or int(a.max(initial=0)) > 255 or int(a.min(initial=0)) < 0:
            a = np.clip(a.astype(np.int64), 0, 65535) / 257.0
        a = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return Image.fromarray(a, "L").convert("RGB")
    return im.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV, RGBX ...


def open_rgb(path: str | os.PathLike, draft_size: int | None = None) -> Image.Image:
    """Open ``path`` as an 8-bit RGB image with its EXIF orientation applied.

    With ``draft_size``, JPEGs are decoded at a reduced scale (1/2, 1/4, 1/8) whose short side
    is still at least ``draft_size``. Raises :class:`ImageError` for unusable files.
    """
    im = _open(path)
    out = None
    try:
        if draft_size and im.format in _JPEG_FORMATS:
            im.draft("RGB", (int(draft_size), int(draft_size)))
        _load(im)
        try:
            orientation = im.getexif().get(0x0112, 1)
        except Exception:  # a broken EXIF block must not make the image unusable
            orientation = 1
        out = im
        if orientation not in (1, None):
            try:
                out = ImageOps.exif_transpose(im)
            except Exception:
                out = im
        out = _to_rgb(out)
        if out is im and getattr(im, "fp", None) is not None:
            out = im.copy()  # detach from a file handle still open (multi-frame files keep theirs)
        return out
    finally:
        if out is not im:  # a loaded single-frame image has closed its file already: no copy needed
            im.close()


def _resize_crop(im: Image.Image, size: int) -> Image.Image:
    w, h = im.size
    side = min(w, h)
    left = (w - side) / 2
    top = (h - side) / 2
    return im.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + side, top + side),
                     reducing_gap=3.0)


def _resize_pad(im: Image.Image, size: int) -> Image.Image:
    w, h = im.size
    scale = size / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    small = im.resize((nw, nh), Image.Resampling.BILINEAR, reducing_gap=3.0)
    canvas = Image.new("RGB", (size, size), (0, 0, 0))
    canvas.paste(small, ((size - nw) // 2, (size - nh) // 2))
    return canvas


def load_for_model(path: str | os.PathLike, size: int, fit: str = "crop") -> np.ndarray:
    """``uint8`` array ``(size, size, 3)``: short side resized to ``size`` then center-cropped
    (``fit="crop"``), or the whole image letterboxed on black (``fit="pad"``)."""
    if fit not in ("crop", "pad"):
        raise ValueError(f"fit must be 'crop' or 'pad', not {fit!r}")
    im = open_rgb(path, draft_size=size)
    out = _resize_crop(im, size) if fit == "crop" else _resize_pad(im, size)
    return np.asarray(out, dtype=np.uint8)


def load_many(paths: list[str], size: int, fit: str = "crop") -> list[tuple[np.ndarray | None, str]]:
    """``load_for_model`` over several files: ``(array, "")`` or ``(None, reason)`` each, never raising
    (a top-level function, so a pool of processes can run it)."""
    out = []
    for path in paths:
        try:
            out.append((load_for_model(path, size, fit=fit), ""))
        except Exception as exc:  # reported per image, never fatal
            out.append((None, f"{type(exc).__name__}: {exc}"))
    return out


def _thumb_key(path: Path, size: int) -> str:
    st = path.stat()
    h = hashlib.blake2b(digest_size=12)
    h.update(f"{_THUMB_VERSION}|{path}|{st.st_size}|{st.st_mtime_ns}|{size}".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def thumbnail(path: str | os.PathLike, size: int = 256) -> Path:
    """Path of a cached JPEG thumbnail (at most ``min(size, 256)`` px on its long side).

    Keyed by the file's path, size and modification time, so an edited file gets a new one.
    """
    size = max(1, min(int(size), THUMB_MAX))
    path = Path(path).resolve()
    try:
        key = _thumb_key(path, size)
    except FileNotFoundError:
        raise ImageError("file not found") from None
    target = cache_dir("thumbs", key[:2]) / f"{key}-{size}.jpg"
    if target.exists():
        return target
    im = open_rgb(path, draft_size=size)
    im.thumbnail((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
    with atomic_path(target) as tmp:
        im.save(tmp, "JPEG", quality=85)
    return target


def thumbnail_data_uri(path: str | os.PathLike, size: int = 128) -> str:
    """``data:image/jpeg;base64,...`` of the thumbnail, for dataframe image columns."""
    data = thumbnail(path, size).read_bytes()
    return "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii")
