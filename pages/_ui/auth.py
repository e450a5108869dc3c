"""Who may use the app: everyone on this machine; with ``SIMLAB_PASSWORD`` set, only people who know it.

simlab listens on 127.0.0.1 by default and accepts only loopback names in the Host header
(``server.allowedHosts`` in ``.streamlit/config.toml``, so a web page that rebinds its own domain to
127.0.0.1 cannot open the app's websocket). Served on another address on purpose
(``make run HOST=0.0.0.0``), anyone who reaches the port could browse server paths, start jobs and delete
runs, so the app then refuses to serve at all without a password. A password that is set is always asked,
loopback or not (Streamlit's password gate pattern, compared in constant time). Wrong passwords are logged
and slow down per client address: after :data:`FREE_TRIES` in a row, each next try must wait
:data:`BACKOFF_FIRST` seconds, doubling up to :data:`BACKOFF_MAX`; a try made while waiting is refused
unchecked, and the right password after the wait gets in whatever came before.
"""

from __future__ import annotations

import hmac
import logging
import math
import os
import threading
import time
from collections.abc import Callable

import streamlit as st

log = logging.getLogger(__name__)

PASSWORD_ENV = "SIMLAB_PASSWORD"
PRIVATE_ADDRESSES = ("127.0.0.1", "localhost", "::1")
FREE_TRIES = 3  # wrong passwords in a row that cost nothing (typos)
BACKOFF_FIRST = 1.0  # seconds to wait after the first wrong password beyond FREE_TRIES; doubles with each next one
BACKOFF_MAX = 60.0  # seconds: the longest wait
MAX_CLIENTS = 10_000  # clients remembered at most; those whose wait has long passed are forgotten first
LOOPBACK_CLIENT = "this machine"  # the client key of connections from 127.0.0.1 / ::1 (st.context says None)


class LoginThrottle:
    """Wrong passwords in a row per client, and how long each client must wait before its next try.

    ``clock`` is the time source in seconds (``time.monotonic``). Thread-safe: every session's script run
    shares one throttle (:data:`THROTTLE`).
    """

    def __init__(self, free: int = FREE_TRIES, first: float = BACKOFF_FIRST, most: float = BACKOFF_MAX,
                 clock: Callable[[], float] = time.monotonic):
        self.free, self.first, self.most, self.clock = free, first, most, clock
        self._lock = threading.Lock()
        self._failures: dict[str, tuple[int, float]] = {}  # client -> (wrong passwords in a row, time of the last)

    def delay(self, failures: int) -> float:
        """Seconds a client with ``failures`` wrong passwords in a row waits after the last one."""
        if failures <= self.free:
            return 0.0
        return min(self.most, self.first * 2.0 ** min(failures - self.free - 1, 64))

    def failures(self, client: str) -> int:
        with self._lock:
            return self._failures.get(client, (0, 0.0))[0]

    def wait(self, client: str) -> float:
        """Seconds before ``client`` may try again (0: now)."""
        with self._lock:
            count, last = self._failures.get(client, (0, 0.0))
        return max(0.0, last + self.delay(count) - self.clock()) if count else 0.0

    def failed(self, client: str) -> float:
        """Count a wrong password of ``client``; returns the seconds it must now wait."""
        now = self.clock()
        with self._lock:
            count = self._failures.pop(client, (0, 0.0))[0] + 1
            self._failures[client] = (count, now)
            if len(self._failures) > MAX_CLIENTS:
                self._forget_old(now)
        return self.delay(count)

    def succeeded(self, client: str) -> None:
        with self._lock:
            self._failures.pop(client, None)

    def reset(self) -> None:
        with self._lock:
            self._failures.clear()

    def _forget_old(self, now: float) -> None:
        stale = [c for c, (_, last) in self._failures.items() if now - last > 10 * self.most]
        for client in stale or list(self._failures)[: len(self._failures) - MAX_CLIENTS]:
            del self._failures[client]


THROTTLE = LoginThrottle()


def exposed() -> bool:
    """Whether the server listens on an address other people can reach."""
    address = (st.get_option("server.address") or "").strip()
    return address not in PRIVATE_ADDRESSES


def client_key() -> str:
    """Who is trying: the connection's remote address as Streamlit reports it (None from loopback)."""
    address = st.context.ip_address
    return address if isinstance(address, str) and address else LOOPBACK_CLIENT


def _seconds(wait: float) -> str:
    return f"{max(1, math.ceil(wait))} s"


def _try_password(entered: str, expected: str) -> str | None:
    """Check one submitted password; returns the message to show (None when it let the visitor in)."""
    client = client_key()
    wait = THROTTLE.wait(client)
    if wait > 0:
        log.warning("login from %s refused unchecked: %d wrong passwords in a row, %.1f s left to wait",
                    client, THROTTLE.failures(client), wait)
        return f"Too many wrong passwords: try again in {_seconds(wait)}."
    if hmac.compare_digest(entered.encode(), expected.encode()):
        THROTTLE.succeeded(client)
        st.session_state["authenticated"] = True
        log.info("login from %s", client)
        return None
    delay = THROTTLE.failed(client)
    log.warning("wrong password from %s (%d in a row); next try allowed in %.0f s", client,
                THROTTLE.failures(client), delay)
    return "Wrong password." + (f" Wait {_seconds(delay)} before the next try." if delay else "")


def require_access() -> None:
    """Stop the script run unless this visitor may use the app."""
    if st.session_state.get("authenticated"):
        return
    expected = os.environ.get(PASSWORD_ENV, "")
    if not expected:
        if not exposed():
            return
        address = st.get_option("server.address") or "all addresses"
        st.error(f"simlab is served on {address}, where other machines can reach it, and no password is set. "
                 f"Set {PASSWORD_ENV} and start it again (`{PASSWORD_ENV}=... make run HOST={address}`), "
                 "or run it on this machine only (`make run`).", icon=":material/lock:")
        st.stop()
    st.title("simlab")
    with st.form("password"):
        entered = st.text_input("Password", type="password", help=f"Set by whoever started simlab ({PASSWORD_ENV}).")
        submitted = st.form_submit_button("Enter")
    if submitted:
        st.session_state["login_message"] = _try_password(entered, expected)
    if st.session_state.get("authenticated"):
        st.session_state.pop("login_message", None)
        st.rerun()
    if message := st.session_state.get("login_message"):
        st.error(message)
    st.stop()
