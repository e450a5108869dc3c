"""Who may use the app: everyone on this machine; on a network, only people who know the password.

simlab listens on 127.0.0.1 by default (``.streamlit/config.toml``). Served on another address on
purpose (``make run HOST=0.0.0.0``), anyone who reaches the port could browse server paths, start jobs
and delete runs, so the app then asks for the password in ``SIMLAB_PASSWORD`` (Streamlit's password
gate pattern, compared in constant time) and refuses to serve at all without one.
"""

from __future__ import annotations

import hmac
import os

import streamlit as st

PASSWORD_ENV = "SIMLAB_PASSWORD"
PRIVATE_ADDRESSES = ("127.0.0.1", "localhost", "::1")


def exposed() -> bool:
    """Whether the server listens on an address other people can reach."""
    address = (st.get_option("server.address") or "").strip()
    return address not in PRIVATE_ADDRESSES


def _check(password: str) -> None:
    expected = os.environ.get(PASSWORD_ENV, "")
    st.session_state["authenticated"] = bool(expected) and hmac.compare_digest(password.encode(), expected.encode())
    st.session_state["password_tried"] = True


def require_access() -> None:
    """Stop the script run unless this visitor may use the app."""
    if not exposed() or st.session_state.get("authenticated"):
        return
    address = st.get_option("server.address") or "all addresses"
    if not os.environ.get(PASSWORD_ENV):
        st.error(f"simlab is served on {address}, where other machines can reach it, and no password is set. "
                 f"Set {PASSWORD_ENV} and start it again (`{PASSWORD_ENV}=... make run HOST={address}`), "
                 "or run it on this machine only (`make run`).", icon=":material/lock:")
        st.stop()
    st.title("simlab")
    with st.form("password"):
        password = st.text_input("Password", type="password", help=f"Set by whoever started simlab ({PASSWORD_ENV}).")
        if st.form_submit_button("Enter"):
            _check(password)
    if st.session_state.get("authenticated"):
        st.rerun()
    if st.session_state.get("password_tried"):
        st.error("Wrong password.")
    st.stop()
