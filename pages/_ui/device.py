"""The device badge: "GPU: name" or "CPU (n cores)", detected once in a child process."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import streamlit as st

from simlab.paths import REPO_ROOT


def _cpu_text() -> str:
    return f"CPU ({os.cpu_count()} cores)"


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
            state["text"] = lines[-1] if out.returncode == 0 and lines else _cpu_text()
        except (OSError, subprocess.SubprocessError):
            state["text"] = _cpu_text()

    threading.Thread(target=probe, daemon=True).start()
    return state


def device_text(wait: float = 0.0) -> str | None:
    """The device badge text ("GPU: name" / "CPU (n cores)"), or None while still detecting."""
    state = _device_probe()
    deadline = time.monotonic() + wait
    while state["text"] is None and time.monotonic() < deadline:
        time.sleep(0.1)
    return state["text"]


def _badge(text: str) -> None:
    st.badge(text, icon=":material/bolt:" if text.startswith("GPU") else ":material/memory:",
             color="green" if text.startswith("GPU") else "gray")


@st.fragment(run_every=1)
def _device_pending() -> None:
    """Polls until detection finishes, then draws the badge in place. Never a rerun of the whole page: that
    closed whatever dialog the user had opened meanwhile (a pair, an image). The page's next run draws the
    badge directly and this fragment is gone."""
    text = device_text()
    if text is None:
        st.caption("Device: detecting…")
    else:
        _badge(text)


def device_badge() -> None:
    """The device badge (green for a GPU), polling quietly until detection finishes."""
    text = device_text(wait=0.3)
    if text is None:
        _device_pending()
    else:
        _badge(text)
