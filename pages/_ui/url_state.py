"""State in the URL: a widget's value mirrored in a query parameter, so a reload or a shared link restores it.

Call :func:`bind` right before drawing a widget with ``key=``. A value the URL brings that this session has not
seen yet (a reload, a shared link, a page link with ``query_params``) becomes the widget's value; after that the
widget leads and the URL follows it (a value equal to the default leaves the parameter out, so URLs stay short).
Streamlit clears the query parameters when the page changes; each page writes its own back on its next run.

The browser sends its URL with each rerun, and applies a run's writes only once that run's messages arrive: a rerun
asked for while the previous one is still writing (keys pressed quickly on a slider) brings an older value this
page wrote itself. Such an echo is not a link: every value written on the current page is remembered, and never
read back as new while the page stays the same.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx

SEEN_KEY = "_url_seen"  # st.session_state key: {param: the raw URL value last read or written}
WRITTEN_KEY = "_url_written"  # st.session_state key: (page, {param: [raw values written on that page]})
WRITTEN_MAX = 256  # values remembered per parameter (the oldest are forgotten)


def _raw(param: str, multi: bool) -> str | tuple[str, ...] | None:
    if param not in st.query_params:
        return None
    return tuple(st.query_params.get_all(param)) if multi else st.query_params.get(param)


def _seen() -> dict:
    return st.session_state.setdefault(SEEN_KEY, {})


def _page() -> str:
    ctx = get_script_run_ctx()
    return ctx.page_script_hash if ctx is not None else ""


def _written() -> dict:
    """{param: raw values written on the current page}; emptied when the page changes."""
    page = _page()
    held = st.session_state.get(WRITTEN_KEY)
    if not held or held[0] != page:
        held = st.session_state[WRITTEN_KEY] = (page, {})
    return held[1]


def forget_cleared() -> None:
    """Forget the values of parameters the URL no longer has (the page changed: Streamlit cleared them), so that
    a link that brings one of them again counts as new. The app calls it once at the top of every run."""
    seen = _seen()
    for param in [p for p in seen if p not in st.query_params]:
        del seen[param]


def url_value(param: str, *, multi: bool = False):
    """The URL's value of ``param`` when this session has not seen it yet (then it counts as seen), else None."""
    raw = _raw(param, multi)
    if raw is None or _seen().get(param) == raw or raw in _written().get(param, ()):
        return None  # seen, or a value this page wrote that the browser sends back late
    _seen()[param] = raw
    return list(raw) if multi else raw


def set_url(param: str, value: str | Iterable[str] | None) -> None:
    """Write ``param`` (a list writes it repeated; None or an empty list removes it), remembered as seen."""
    multi = value is not None and not isinstance(value, str)
    raw = tuple(str(v) for v in value) if multi else value
    if raw is None or raw == ():
        if param in st.query_params:
            del st.query_params[param]
        _seen().pop(param, None)
        return
    if _raw(param, multi) != raw:
        st.query_params[param] = list(raw) if multi else raw
    _seen()[param] = raw
    written = _written().setdefault(param, [])
    if raw not in written:
        written.append(raw)
        del written[:-WRITTEN_MAX]


def bind(key: str, param: str, default: Any = None, *, parse: Callable[[str], Any] = str,
         dump: Callable[[Any], str] = str, valid: Callable[[Any], bool] | None = None,
         choices: Iterable | None = None, multi: bool = False) -> str:
    """Keep ``st.session_state[key]`` (a widget's value) and the query parameter ``param`` in step; returns ``key``.

    Call right before the widget (``st.radio(..., key=bind("compare_metric", "metric", "accuracy"))``).
    ``parse`` turns the URL's text into a value (``ValueError`` or ``TypeError``: ignored), ``dump`` the reverse;
    ``choices`` or ``valid`` reject values the widget could not show. ``multi``: a list, one parameter per item.
    """
    allowed = None if choices is None else list(choices)

    def ok(value) -> bool:
        if multi:
            return all(ok_one(v) for v in value)
        return ok_one(value)

    def ok_one(value) -> bool:
        return (allowed is None or value in allowed) and (valid is None or valid(value))

    raw = url_value(param, multi=multi)
    if raw is not None:
        try:
            value = [parse(v) for v in raw] if multi else parse(raw)
        except (ValueError, TypeError):
            value = None
        if value is not None and ok(value):
            st.session_state[key] = value
    current = st.session_state.get(key, default)
    if current is None or current == default or (multi and not current):
        set_url(param, None)
    else:
        set_url(param, [dump(v) for v in current] if multi else dump(current))
    return key


def parse_float(text: str) -> float:
    value = float(text)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(text)
    return value


def parse_range(text: str) -> tuple[float, float]:
    """"0.2,0.8" -> (0.2, 0.8)."""
    lo, hi = (parse_float(t) for t in text.split(","))
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(text)
    return lo, hi


def dump_range(value) -> str:
    return f"{value[0]:g},{value[1]:g}"


def dump_float(value: float) -> str:
    return f"{value:.4g}"
