"""Thumbnails for the pages: small data URIs, cached thumbnail files, grids of square tiles, and the
large view a click on a tile opens (a dialog with the image itself, previous / next)."""

from __future__ import annotations

import html
import logging
import os
import re

import streamlit as st
from PIL import Image

from simlab.data.images import open_rgb, thumbnail, thumbnail_data_uri

log = logging.getLogger(__name__)


@st.cache_data(show_spinner=False, max_entries=20000)
def _thumb_uri(path: str, size: int, mtime: float) -> str | None:
    try:
        return thumbnail_data_uri(path, size)
    except Exception:  # shown as an "unreadable" tile
        log.debug("no thumbnail for %s", path, exc_info=True)
        return None


def thumb_uri(path: str, size: int = 128) -> str | None:
    """A small JPEG data URI of an image (cached), or None if it cannot be read."""
    try:
        mtime = os.stat(path).st_mtime
    except OSError:
        return None
    return _thumb_uri(str(path), int(size), mtime)


def thumb_path(path: str, size: int = 256) -> str | None:
    """Path of a cached thumbnail file, for st.image (None if the image cannot be read)."""
    try:
        return str(thumbnail(path, size))
    except Exception:  # the caller shows "unreadable"
        log.debug("no thumbnail for %s", path, exc_info=True)
        return None


BREAK_AFTER = re.compile(r"([/\\_\-.·,:;]+)")  # where a long name may wrap: after separators, never mid-word
WRAP_CSS = "white-space:normal;overflow-wrap:break-word;word-break:normal"  # break-word: only a word too long


def breakable(text: str) -> str:
    """``text`` HTML-escaped, with line-break opportunities (<wbr>) after path and name separators, so that
    ``scene_0042/IMG_20170101_120000.jpg`` wraps at ``/`` and ``_`` rather than mid-word."""
    return "".join(html.escape(part) + ("<wbr>" if BREAK_AFTER.fullmatch(part) else "")
                   for part in BREAK_AFTER.split(str(text)) if part)


def tile_html(path: str, caption: str, size: int = 160, mark: bool = False, wrap: bool = False,
              open_id: str | None = None, show_caption: bool = True) -> str:
    """One square thumbnail tile with its caption (escaped; only on hover when not ``show_caption``);
    ``open_id`` makes it open the large view."""
    uri = thumb_uri(path, size)
    img = (f'<img src="{uri}" alt="" style="width:100%;aspect-ratio:1;object-fit:cover;border-radius:4px;'
           f'display:block{";outline:3px solid #3b6ea8;outline-offset:-3px" if mark else ""}">' if uri else
           '<div style="width:100%;aspect-ratio:1;border-radius:4px;background:#eee;display:flex;'
           'align-items:center;justify-content:center;font-size:.75rem;color:#888">unreadable</div>')
    text = (f'<figcaption style="font-size:.75rem;line-height:1.05rem;{WRAP_CSS};opacity:.8">{breakable(caption)}'
            if wrap else
            '<figcaption style="font-size:.75rem;line-height:1.1rem;overflow:hidden;text-overflow:ellipsis;'
            f'white-space:nowrap;opacity:.8">{html.escape(caption)}')
    text = text if show_caption else "<figcaption hidden>"
    clickable = (f' data-simlab-open="{html.escape(open_id, quote=True)}" role="button"' if open_id else "")
    cursor = ";cursor:zoom-in" if open_id else ""
    return (f'<figure style="margin:0;min-width:0{cursor}" title="{html.escape(caption, quote=True)}"{clickable}>'
            f'{img}{text}</figcaption></figure>')


def tiles_html(paths: list[str], captions: list[str] | None = None, tile_px: int = 120, size: int = 160,
               marks: list[bool] | None = None, wrap: bool = False, open_ids: list[str] | None = None) -> str:
    """HTML of a grid of square thumbnail tiles (small data URIs); every caption is HTML-escaped.
    ``wrap`` shows whole captions (wrapped after separators) instead of cutting them with an ellipsis."""
    captions = captions if captions is not None else [os.path.basename(p) for p in paths]
    marks = marks or [False] * len(paths)
    open_ids = open_ids or [None] * len(paths)
    cells = [tile_html(path, cap, size, mark, wrap, oid)
             for path, cap, mark, oid in zip(paths, captions, marks, open_ids)]
    return (f'<div style="display:grid;grid-template-columns:repeat(auto-fill,minmax({tile_px}px,1fr));gap:.5rem">'
            + "".join(cells) + "</div>")


def image_grid(paths: list[str], captions: list[str] | None = None, tile_px: int = 120, size: int = 160,
               marks: list[bool] | None = None, wrap: bool = False, open_ids: list[str] | None = None) -> None:
    """Thumbnails as a grid of square tiles, captions escaped (plain text), ``marks`` outlined."""
    st.html(tiles_html(paths, captions, tile_px, size, marks, wrap, open_ids))


# --------------------------------------------------------------------------- the large view

_CLICKS_JS = """
export default function(component) {
    const { data, setTriggerValue } = component;
    const scope = data.scope + ":";
    const onClick = (event) => {
        const tile = event.target.closest && event.target.closest("[data-simlab-open]");
        const id = tile && tile.getAttribute("data-simlab-open");
        if (id && id.startsWith(scope)) {
            event.preventDefault();
            setTriggerValue("open", id.slice(scope.length));
        }
    };
    document.addEventListener("click", onClick);
    return () => document.removeEventListener("click", onClick);
}
"""
_clicks = st.components.v2.component("simlab.tile_clicks", js=_CLICKS_JS)


def tile_clicks(scope: str) -> str | None:
    """The id of the tile just clicked among those whose ``open_id`` starts with ``scope:`` (st.html keeps
    data attributes; this listener in the page sends the click to Python), or None."""
    result = _clicks(key=f"tile_clicks_{scope}", data={"scope": scope}, height=0, on_open_change=lambda: None)
    return getattr(result, "open", None)


@st.cache_data(show_spinner=False, max_entries=64)
def _large(path: str, mtime: float, max_px: int) -> Image.Image | None:
    try:
        im = open_rgb(path)
    except Exception:  # shown as unreadable
        log.debug("cannot open %s", path, exc_info=True)
        return None
    im.thumbnail((max_px, max_px))
    return im


def large_image(path: str, max_px: int = 1600) -> Image.Image | None:
    """The image itself (EXIF orientation applied, RGB), at most ``max_px`` on its long side, or None."""
    try:
        return _large(str(path), os.stat(path).st_mtime, max_px)
    except OSError:
        return None


def open_image(key: str, paths: list[str], captions: list[str], index: int) -> None:
    """Open the large view of ``paths[index]``, with previous / next through ``paths``."""
    st.session_state[f"{key}_at"] = index
    _image_dialog(key, paths, captions)


@st.dialog("Image", width="large")
def _image_dialog(key: str, paths: list[str], captions: list[str]) -> None:
    at = st.session_state.get(f"{key}_at", 0) % len(paths)
    nav = st.columns([1, 6, 1], vertical_alignment="center")
    if nav[0].button("Previous", key=f"{key}_prev", icon=":material/chevron_left:", disabled=len(paths) < 2):
        at = st.session_state[f"{key}_at"] = (at - 1) % len(paths)
    if nav[2].button("Next", key=f"{key}_next", icon=":material/chevron_right:", disabled=len(paths) < 2):
        at = st.session_state[f"{key}_at"] = (at + 1) % len(paths)
    with nav[1]:
        st.html(f"<div style='text-align:center;{WRAP_CSS}'>{breakable(captions[at])} "
                f"<span style='opacity:.6'>({at + 1} of {len(paths)})</span></div>")
    image = large_image(paths[at])
    if image is None:
        st.warning("This image cannot be read.", icon=":material/broken_image:")
    else:
        # as large as the dialog allows, never taller than a laptop screen holds, small images at most doubled
        width = int(min(1180, 2 * image.width, 620 * image.width / max(image.height, 1)))
        with st.container(horizontal_alignment="center"):
            st.image(image, width=width)
        st.caption(f"{image.width} × {image.height} px shown · {paths[at]}")
