"""Helpers shared by the pages: the store, the current dataset, thumbnails, background jobs.

Pages stay thin: they read and write through simlab, and use these helpers for the parts every
page needs. Nothing here holds a model; slow reads are cached.
"""

from __future__ import annotations

import html
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import streamlit as st

from simlab import jobs
from simlab.paths import REPO_ROOT, cache_dir
from simlab.store import Store

def _leave_legacy_multipage_mode() -> None:
    """Route every run through app.py's st.navigation, even the first one after the server starts.

    Streamlit treats a folder named pages/ beside the entry script as a v1 multipage app until
    st.navigation has run once in the server process: a first visit to e.g. /data would run
    pages/data.py alone, with the folder's raw file list (app, common, ...) as the sidebar. Every
    page imports this module, so the first such run switches the mode off and reruns itself;
    the rerun goes through app.py and lands on the same page (page ids are their URL paths).
    """
    try:
        from streamlit.runtime.pages_manager import PagesManager
        from streamlit.runtime.scriptrunner import get_script_run_ctx
    except ImportError:  # a Streamlit without these internals: nothing to fix
        return
    if getattr(PagesManager, "uses_pages_directory", False) and get_script_run_ctx() is not None:
        PagesManager.uses_pages_directory = False
        st.rerun()


_leave_legacy_multipage_mode()

DATASET_KEY = "dataset_spec"  # st.session_state key of the current dataset spec
# Plain symbols (tables cannot show icons; these render in any font, emoji fonts not needed)
STATUS_ICONS = {"queued": "○", "running": "●", "done": "✓", "failed": "✗", "cancelled": "■"}


# --------------------------------------------------------------------------- store


def store_path() -> Path:
    """Path of the run store for this session (``$SIMLAB_CACHE/simlab.db``)."""
    return cache_dir() / "simlab.db"


@st.cache_resource(show_spinner=False)
def _store_at(path: str) -> Store:
    return Store(path)


def store() -> Store:
    """The Store for the default path (cached; safe to share: each call opens its own connection)."""
    return _store_at(str(store_path()))


# --------------------------------------------------------------------------- current dataset


def default_dataset_spec() -> str:
    """The dataset a new session starts on: ``$SIMLAB_DATASET`` or ``demo``."""
    return os.environ.get("SIMLAB_DATASET", "").strip() or "demo"


def current_dataset_spec() -> str:
    """The dataset spec the pages work on (kept in st.session_state)."""
    if DATASET_KEY not in st.session_state:
        st.session_state[DATASET_KEY] = default_dataset_spec()
    return st.session_state[DATASET_KEY]


def set_dataset_spec(spec: str) -> None:
    """Make ``spec`` the current dataset (and remember it in the sidebar's list)."""
    st.session_state[DATASET_KEY] = spec
    recent = st.session_state.setdefault("recent_datasets", [])
    if spec not in recent:
        recent.insert(0, spec)


def known_dataset_specs() -> list[str]:
    """Specs to offer in the picker: current, demo, $SIMLAB_DATASET, recent ones, those with runs."""
    specs = [current_dataset_spec(), "demo", default_dataset_spec(), *st.session_state.get("recent_datasets", [])]
    try:
        specs += [r["dataset"] for r in cached_runs() if r.get("dataset")]
    except Exception:  # an unreadable store must not hide the picker
        pass
    return list(dict.fromkeys(s for s in specs if s))


@st.cache_data(show_spinner=False, ttl=600, max_entries=8)
def _load_dataset(spec: str, cache_root: str):
    from simlab.data import load_dataset

    return load_dataset(spec)


def load_dataset_cached(spec: str, show_error: bool = True):
    """The Dataset for ``spec`` (cached), or None with an st.error saying what is wrong."""
    from simlab.data import DatasetError

    from simlab.data.demo import demo_dir

    first_demo = spec == "demo" and not demo_dir().exists()
    text = ("Generating the demo images (first time only, up to a minute)…" if first_demo
            else f"Loading {spec}…")
    try:
        with st.spinner(text):
            return _load_dataset(spec, str(cache_dir()))
    except DatasetError as exc:
        if show_error:
            st.error(f"Could not load the dataset **{escape_md(spec)}**: {escape_md(str(exc))}", icon=":material/folder_off:")
    except Exception as exc:  # anything else: a short message, never a raw traceback
        if show_error:
            st.error(f"Could not load the dataset {escape_md(spec)}: {escape_md(type(exc).__name__)}: "
                     f"{escape_md(str(exc)[:300])}")
    return None


def load_current_dataset():
    """The current Dataset (cached by spec), or None after showing an st.error."""
    return load_dataset_cached(current_dataset_spec())


def require_dataset():
    """The current Dataset; when it does not load, a pointer to the Data page and the page stops here."""
    dataset = load_current_dataset()
    if dataset is None:
        st.info("Choose a dataset that loads on the Data page first.", icon=":material/arrow_forward:")
        st.stop()
    return dataset


def clear_dataset_cache() -> None:
    """Forget cached datasets (after files changed on disk)."""
    _load_dataset.clear()


# --------------------------------------------------------------------------- text and images


def escape_md(text: str) -> str:
    """Text safe to put inside st.markdown: HTML and Markdown specials escaped."""
    out = html.escape(str(text), quote=False)
    for ch in "\\`*_{}[]()#+-.!|~>$":
        out = out.replace(ch, "\\" + ch)
    return out


@st.cache_data(show_spinner=False, max_entries=20000)
def _thumb_uri(path: str, size: int, mtime: float) -> str | None:
    from simlab.data.images import thumbnail_data_uri

    try:
        return thumbnail_data_uri(path, size)
    except Exception:
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
    from simlab.data.images import thumbnail

    try:
        return str(thumbnail(path, size))
    except Exception:
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


def short_path(path: str, dataset=None) -> str:
    """A path relative to the dataset's root when possible."""
    if dataset is not None:
        try:
            return str(Path(path).relative_to(dataset.root))
        except ValueError:
            pass
    return os.path.basename(path)


def fmt_duration(seconds: float | None) -> str:
    """1.2 s, 3 min 04 s, 1 h 02 min."""
    if seconds is None or seconds != seconds:
        return ""
    if seconds < 60:
        return f"{seconds:.1f} s"
    s = int(seconds)
    return f"{s // 60} min {s % 60:02d} s" if s < 3600 else f"{s // 3600} h {s % 3600 // 60:02d} min"


def fmt_when(ts: float | None) -> str:
    """A timestamp as local date and time."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else ""


# --------------------------------------------------------------------------- runs


@st.cache_data(show_spinner=False, ttl=2)
def _runs(path: str) -> list[dict]:
    return Store(path).runs()


def cached_runs() -> list[dict]:
    """All runs, newest first (cached for 2 s: cheap enough to call from every page)."""
    return _runs(str(store_path()))


def clear_runs_cache() -> None:
    """Forget the cached runs list (after deleting or adding runs)."""
    _runs.clear()


def runs_frame():
    """store().runs_frame() for finished pair runs."""
    return store().runs_frame(status="done")


# --------------------------------------------------------------------------- device


@st.cache_resource(show_spinner=False)
def _device_probe() -> dict:
    """Detect the device in a child process (importing TensorFlow here would slow every page)."""
    state = {"text": None}

    def probe():
        try:
            out = subprocess.run([sys.executable, "-c", "from simlab.device import describe; print(describe())"],
                                 capture_output=True, text=True, timeout=120, cwd=str(REPO_ROOT),
                                 env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
                                          PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT),
                                                                                  os.environ.get("PYTHONPATH")]))))
            lines = out.stdout.strip().splitlines()
            state["text"] = lines[-1] if out.returncode == 0 and lines else f"CPU ({os.cpu_count()} cores)"
        except (OSError, subprocess.SubprocessError):
            state["text"] = f"CPU ({os.cpu_count()} cores)"

    threading.Thread(target=probe, daemon=True).start()
    return state


def device_text(wait: float = 0.0) -> str | None:
    """The device badge text ("GPU: name" / "CPU (n cores)"), or None while still detecting."""
    state = _device_probe()
    deadline = time.monotonic() + wait
    while state["text"] is None and time.monotonic() < deadline:
        time.sleep(0.1)
    return state["text"]


@st.fragment(run_every=1)
def _device_pending() -> None:
    text = device_text()
    if text is None:
        st.caption("Device: detecting…")
    else:
        st.rerun()


def device_badge() -> None:
    """The device badge (green for a GPU), polling quietly until detection finishes."""
    text = device_text(wait=0.3)
    if text is None:
        _device_pending()
    else:
        st.badge(text, icon=":material/bolt:" if text.startswith("GPU") else ":material/memory:",
                 color="green" if text.startswith("GPU") else "gray")


# --------------------------------------------------------------------------- jobs


def start_job(kind: str, params: dict | None = None) -> str:
    """Start a background job (worker process) and remember it in the session; returns its id."""
    job_id = jobs.start_job(kind, params or {}, store_path=store_path())
    st.session_state.setdefault("jobs", {})[kind] = job_id
    _runs.clear()
    return job_id


def get_job(job_id: str) -> dict | None:
    """The job's row from the store (fresh, not cached)."""
    return jobs.get_job(job_id, store_path())


def latest_job(kind: str | tuple[str, ...], active_only: bool = False) -> dict | None:
    """The newest job of a kind (this session's, else the store's), e.g. to find a running one after a reload."""
    kinds = (kind,) if isinstance(kind, str) else tuple(kind)
    mine = [st.session_state.get("jobs", {}).get(k) for k in kinds]
    jobs.reap_stale(store())
    for job_id in filter(None, mine):
        job = get_job(job_id)
        if job and (not active_only or job["status"] in jobs.ACTIVE):
            return job
    for job in store().jobs():
        if job["kind"] in kinds and (not active_only or job["status"] in jobs.ACTIVE):
            return job
    return None


def _progress_text(job: dict) -> tuple[float, str]:
    done, total = job.get("done") or 0, job.get("total") or 0
    frac = min(max(done / total, 0.0), 1.0) if total else 0.0
    label = jobs.JOB_LABELS.get(job["kind"], job["kind"])
    elapsed = time.time() - (job.get("started") or job.get("created") or time.time())
    msg = job.get("message") or ""
    pct = f"{frac:.0%} · " if total else ""
    return frac, f"{label} — {pct}{msg} ({fmt_duration(elapsed)})"


def show_job_error(job: dict) -> None:
    """A failed job: its short message, and the traceback in a collapsed expander."""
    st.error(f"{jobs.JOB_LABELS.get(job['kind'], job['kind'])} failed: {job.get('message') or 'unknown error'}",
             icon=":material/error:")
    if job.get("error"):
        with st.expander("Details (traceback)"):
            st.code(job["error"], language=None)


def _job_final(job: dict) -> None:
    status = job["status"]
    label = jobs.JOB_LABELS.get(job["kind"], job["kind"])
    took = fmt_duration((job.get("finished") or 0) - (job.get("started") or job.get("created") or 0))
    if status == "done":
        st.success(f"{label} finished in {took}. {job.get('message') or ''}", icon=":material/check_circle:")
    elif status == "cancelled":
        st.warning(f"{label} was cancelled. {job.get('message') or ''}", icon=":material/stop_circle:")
    elif status == "failed":
        show_job_error(job)


@st.fragment(run_every=1)
def _live_job(job_id: str) -> None:
    job = get_job(job_id)
    if job is None:
        st.info("This job no longer exists.")
        return
    if job["status"] in jobs.ACTIVE:
        jobs.reap_stale(store())
        job = get_job(job_id)
    if job["status"] not in jobs.ACTIVE:
        _runs.clear()
        st.rerun()  # the whole page: it shows the result, and this fragment stops polling
    frac, text = _progress_text(job)
    cols = st.columns([6, 1], vertical_alignment="center")
    with cols[0]:
        st.progress(frac, text=text)
    with cols[1]:
        stopping = bool(job.get("cancel"))
        if st.button("Stopping…" if stopping else "Cancel", key=f"cancel_{job_id}", disabled=stopping,
                     width="stretch"):
            jobs.cancel_job(job_id, store_path())
            st.rerun(scope="fragment")


def job_panel(job_id: str | None) -> dict | None:
    """Live progress of a job (bar, message, Cancel) polling every second until it ends, then its
    outcome (success, cancelled, or the error with its traceback folded). Returns the job row."""
    if not job_id:
        return None
    job = get_job(job_id)
    if job is None:
        return None
    if job["status"] in jobs.ACTIVE:
        _live_job(job_id)
    else:
        _job_final(job)
    return job


# --------------------------------------------------------------------------- misc UI


def empty_state(text: str, page: str | None = None, label: str | None = None, icon: str = ":material/arrow_forward:") -> None:
    """An info box saying what to do next, with an optional link to the page that does it."""
    st.info(text, icon=icon)
    if page:
        page_link(page, label or "Go", icon=":material/arrow_forward:")


def page_exists(page: str) -> bool:
    """Whether a page file (e.g. 'pages/compare.py') exists, so links to pages in progress are skipped."""
    return (REPO_ROOT / page).exists()


def page_link(page: str, label: str, icon: str | None = None, query_params: dict | None = None) -> None:
    """st.page_link to a page if its file exists (silently nothing otherwise)."""
    if page_exists(page):
        try:
            st.page_link(page, label=label, icon=icon, query_params=query_params)
        except Exception:  # not registered in st.navigation (e.g. running a page file alone)
            pass


def no_runs_yet() -> None:
    """The empty state of pages that show runs: say so, and link to where runs are made."""
    st.info("No runs yet - run the demo experiment on Home or start a grid on Train.",
            icon=":material/lightbulb:")
    cols = st.columns(4)
    with cols[0]:
        page_link("pages/home.py", "Home: the demo experiment", icon=":material/home:")
    with cols[1]:
        page_link("pages/train.py", "Train: start a grid", icon=":material/model_training:")
