"""Thumbnails for the pages: small data URIs, cached thumbnail files, and grids of square tiles."""

from __future__ import annotations

import html
import logging
import os

import streamlit as st

from simlab.data.images import thumbnail, thumbnail_data_uri

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


def tiles_html(paths: list[str], captions: list[str] | None = None, tile_px: int = 120, size: int = 160,
               marks: list[bool] | None = None) -> str:
    """HTML of a grid of square thumbnail tiles (small data URIs); every caption is HTML-escaped."""
    captions = captions if captions is not None else [os.path.basename(p) for p in paths]
    marks = marks or [False] * len(paths)
    cells = []
    for path, cap, mark in zip(paths, captions, marks):
        uri = thumb_uri(path, size)
        img = (f'<img src="{uri}" alt="" style="width:100%;aspect-ratio:1;object-fit:cover;border-radius:4px;'
               f'display:block{";outline:3px solid #3b6ea8;outline-offset:-3px" if mark else ""}">' if uri else
               '<div style="width:100%;aspect-ratio:1;border-radius:4px;background:#eee;display:flex;'
               'align-items:center;justify-content:center;font-size:.75rem;color:#888">unreadable</div>')
        text = html.escape(cap)
        cells.append(f'<figure style="margin:0" title="{html.escape(cap, quote=True)}">{img}'
                     f'<figcaption style="font-size:.75rem;line-height:1.1rem;overflow:hidden;text-overflow:ellipsis;'
                     f'white-space:nowrap;opacity:.8">{text}</figcaption></figure>')
    return (f'<div style="display:grid;grid-template-columns:repeat(auto-fill,minmax({tile_px}px,1fr));gap:.5rem">'
            + "".join(cells) + "</div>")


def image_grid(paths: list[str], captions: list[str] | None = None, tile_px: int = 120, size: int = 160,
               marks: list[bool] | None = None) -> None:
    """Thumbnails as a grid of square tiles, captions escaped (plain text), ``marks`` outlined."""
    st.html(tiles_html(paths, captions, tile_px, size, marks))
