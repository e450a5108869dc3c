"""The browser boundary, probed as an attacker would: a web page that rebinds its domain to 127.0.0.1, links
that name files of this machine as datasets, and a password guessed over and over.

The rebinding probe talks to a real `streamlit run app.py` started as `make run` starts it (the repo's
.streamlit/config.toml); the rest runs the app in Streamlit's AppTest.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from helpers import streamlit_server, write_group_folder
from pages._ui import auth
from simlab.paths import REPO_ROOT
from simlab.store.known_datasets import KnownDatasets, normalise_spec

APP = str(REPO_ROOT / "app.py")
TIMEOUT = 180
SERVER_START = 120  # seconds
LINKED_QUESTION = "It was not opened in this app before."

# --------------------------------------------------------------------------- DNS rebinding, on a real server


@pytest.fixture(scope="module")
def default_server(tmp_path_factory):
    """`streamlit run app.py` with the repo's settings only (what `make run` starts), on a free port."""
    cache = tmp_path_factory.mktemp("rebind_cache")
    log_path = cache / "streamlit.log"
    env = dict(os.environ, SIMLAB_CACHE=str(cache), PYTHONPATH=str(REPO_ROOT), SIMLAB_DATASET="demo")
    env.pop("SIMLAB_PASSWORD", None)
    with streamlit_server(["--server.headless", "true"], env, log_path, REPO_ROOT, SERVER_START) as port:
        yield {"port": port, "log": log_path}


def websocket_handshake(port: int, host: str, origin: str | None) -> str:
    """Open the app's websocket (/_stcore/stream) as a browser does, with these Host and Origin headers;
    returns the server's status line."""
    key = base64.b64encode(os.urandom(16)).decode()
    lines = ["GET /_stcore/stream HTTP/1.1", f"Host: {host}", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
    if origin:
        lines.append(f"Origin: {origin}")
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        reply = b""
        while b"\r\n" not in reply:
            chunk = s.recv(4096)
            if not chunk:
                break
            reply += chunk
    return reply.split(b"\r\n", 1)[0].decode(errors="replace")


def test_a_websocket_from_a_rebound_domain_is_refused(default_server):
    """DNS rebinding: a page on rebind.example, its name now pointing at 127.0.0.1, opens the app's websocket
    with its own Host and Origin. Refused; the loopback names still connect."""
    port = default_server["port"]
    for name in ("localhost", "127.0.0.1"):
        status = websocket_handshake(port, f"{name}:{port}", f"http://{name}:{port}")
        assert " 101 " in status, (name, status)
    for host in (f"rebind.example:{port}", "rebind.example", f"localhost.rebind.example:{port}",
                 f"127.0.0.1.rebind.example:{port}"):
        status = websocket_handshake(port, host, f"http://{host}")
        assert " 101 " not in status and status.startswith("HTTP/1.1 4"), (host, status)
    assert "rebind.example" in default_server["log"].read_text()  # Streamlit logs each refusal


async def _streamlit_run(ws, query: str, page: str, click: str | None = None) -> list[tuple[str, str, str]]:
    """One script run over the app's websocket, as the browser asks for it (``click``: a button's widget id);
    returns (element type, its text, its widget id) of each element drawn, until the run finishes."""
    from streamlit.proto.BackMsg_pb2 import BackMsg
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

    msg = BackMsg()
    msg.rerun_script.query_string, msg.rerun_script.page_name = query, page
    if click:
        widget = msg.rerun_script.widget_states.widgets.add()
        widget.id, widget.trigger_value = click, True
    await ws.send(msg.SerializeToString())
    drawn = []
    while True:
        forward = ForwardMsg()
        forward.ParseFromString(await asyncio.wait_for(ws.recv(), TIMEOUT))
        kind = forward.WhichOneof("type")
        if kind == "delta" and forward.delta.WhichOneof("type") == "new_element":
            element = forward.delta.new_element
            part = getattr(element, element.WhichOneof("type"))
            text = getattr(part, "body", "") or getattr(part, "label", "")
            drawn.append((element.WhichOneof("type"), str(text), str(getattr(part, "id", ""))))
        if kind == "script_finished" and forward.script_finished == ForwardMsg.FINISHED_SUCCESSFULLY:
            return drawn


@pytest.mark.skipif(not Path("/etc/passwd").is_file(), reason="needs /etc/passwd")
def test_on_the_real_server_a_link_to_etc_passwd_asks_and_once_opened_shows_no_line_of_it(default_server):
    """The whole probe over the websocket, as a browser on localhost runs it: the Data page with
    ?dataset=csv:/etc/passwd draws only the question; after "Open this dataset" it shows the reader's message
    and not one line of the file."""
    import websockets

    port = default_server["port"]

    async def probe():
        async with websockets.connect(f"ws://127.0.0.1:{port}/_stcore/stream", origin=f"http://127.0.0.1:{port}",
                                      max_size=None) as ws:
            asked = await _streamlit_run(ws, "dataset=csv:/etc/passwd", "data")
            button_id = next(i for kind, text, i in asked if kind == "button" and text == "Open this dataset")
            return asked, await _streamlit_run(ws, "dataset=demo", "data", click=button_id)

    asked, opened = asyncio.run(probe())
    assert any(kind == "alert" and "csv:/etc/passwd" in text and LINKED_QUESTION in text for kind, text, _ in asked)
    assert ("heading", "Data", "") not in asked  # the page itself waits for the answer
    assert ("heading", "Data", "") in opened
    shown = " ".join(text for _, text, _ in opened).replace("\\", "")
    assert "Could not load the dataset" in shown and "csv:/etc/passwd" in shown
    leaked = [line for line in passwd_lines() if line in shown or line.split(":")[0] + ":x:" in shown]
    assert not leaked, leaked


# --------------------------------------------------------------------------- links that name a dataset

# Runs in a child process: an audit hook stays for the life of its process, and pytest's own clean-up of
# deep temporary folders must not pay for it. Records every open, listdir and scandir under the linked
# folder (Python's audit events: the app's script thread is seen too) before and after the confirmation.
LINK_PROBE = """
import json, os, sys
root, spec = sys.argv[1], sys.argv[2]
seen = []
def audit(event, args):
    if event in ("open", "os.listdir", "os.scandir") and args and isinstance(args[0], (str, bytes)):
        if os.fsdecode(args[0]).startswith(root):
            seen.append(event + " " + os.fsdecode(args[0]))
sys.addaudithook(audit)
from streamlit.testing.v1 import AppTest
at = AppTest.from_file("app.py", default_timeout=180)
at.query_params["dataset"] = spec
at.run()
out = {"asked": [w.value for w in at.warning], "current": at.session_state["dataset_spec"],
       "titles": [t.value for t in at.title], "before": list(seen), "exceptions": [e.value for e in at.exception]}
next(b for b in at.button if b.label.startswith("Open this dataset")).click().run()
at.switch_page("pages/data.py").run()
out.update(after=at.session_state["dataset_spec"], url=at.query_params["dataset"],
           groups={m.label: m.value for m in at.metric}.get("Groups"), read_after=len(seen))
print("RESULT " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> str:
    """The dataset the server was started on ($SIMLAB_DATASET): a small folder (the demo takes a minute)."""
    return f"folder:{write_group_folder(tmp_path_factory.mktemp('home'), n_groups=2, per_group=2)}"


@pytest.fixture
def app_cache(tmp_path, monkeypatch, home) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("SIMLAB_CACHE", str(cache))
    monkeypatch.setenv("SIMLAB_DATASET", home)
    monkeypatch.delenv("SIMLAB_PASSWORD", raising=False)
    return cache


def everything_shown(at: AppTest) -> str:
    """The text of every element on screen (their protobufs as text, backslash escapes removed)."""
    out, stack = [], [at._tree]
    while stack:
        node = stack.pop()
        if getattr(node, "proto", None) is not None:
            out.append(str(node.proto))
        stack.extend(getattr(node, "children", {}).values())
    return "\n".join(out).replace("\\", "")


def linked(spec: str, page: str | None = None) -> AppTest:
    """A new session opened by a link that names ``spec``: Home, then ``page`` when given (AppTest switches
    pages only after a run that went through app.py's navigation)."""
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.query_params["dataset"] = spec
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    if page:
        at.switch_page(page).run()
        assert not at.exception, [e.value for e in at.exception]
    return at


def question(at: AppTest) -> str:
    return " ".join(w.value for w in at.warning if LINKED_QUESTION in w.value).replace("\\", "")


def button(at: AppTest, label: str):
    return next(b for b in at.button if b.label.startswith(label))


def passwd_lines() -> list[str]:
    return [line for line in Path("/etc/passwd").read_text(errors="replace").splitlines() if line.strip()]


@pytest.mark.skipif(not Path("/etc/passwd").is_file(), reason="needs /etc/passwd")
def test_a_link_to_etc_passwd_asks_first_and_never_shows_a_line_of_it(app_cache, home):
    at = linked("csv:/etc/passwd")
    assert "/etc/passwd" in question(at)
    assert at.session_state["dataset_spec"] == home and at.query_params["dataset"] == home
    assert not at.title  # the page waits for the answer
    lines = passwd_lines()

    button(at, "Open this dataset").click().run()  # the person says yes: it is read, and refused as a CSV
    assert not at.exception
    at.switch_page("pages/data.py").run()
    assert not at.exception
    shown = everything_shown(at)
    assert "Could not load the dataset" in shown and "path" in shown
    leaked = [line for line in lines if line in shown or line.split(":")[0] + ":x:" in shown]
    assert not leaked, leaked


def test_a_link_to_a_folder_not_opened_before_reads_nothing_until_confirmed(app_cache, home, tmp_path):
    folder = write_group_folder(tmp_path / "photos", n_groups=3, per_group=2)
    spec = f"folder:{folder}"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run([sys.executable, "-c", LINK_PROBE, str(folder), spec], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    result = next((json.loads(line[7:]) for line in done.stdout.splitlines() if line.startswith("RESULT ")), None)
    assert result, done.stdout[-2000:] + done.stderr[-3000:]
    assert not result["exceptions"], result["exceptions"]
    assert any(LINKED_QUESTION in w and spec in w.replace("\\", "") for w in result["asked"]), result["asked"]
    assert result["current"] == home and result["titles"] == []  # the page waits for the answer
    assert result["before"] == []  # not one file of it opened, not one folder of it listed
    assert result["after"] == spec and result["url"] == spec and result["groups"] == "3"
    assert result["read_after"] > 0  # once confirmed, it is read
    assert spec in KnownDatasets(app_cache / "simlab.db")

    again = linked(spec + "/", "pages/data.py")  # confirmed once: the next link opens it (trailing slash or not)
    assert not question(again)
    assert {m.label: m.value for m in again.metric}["Groups"] == "3"


def test_a_link_to_etc_as_a_folder_asks_and_staying_keeps_the_current_dataset(app_cache, home):
    at = linked("folder:/etc")
    assert "folder:/etc" in question(at)
    button(at, "Stay on folder:").click().run()
    assert not at.exception
    at.switch_page("pages/data.py").run()
    assert not question(at)
    assert at.session_state["dataset_spec"] == home and at.query_params["dataset"] == home
    assert {m.label: m.value for m in at.metric}["Groups"] == "2"  # the Data page, on the current dataset
    assert "folder:/etc" not in KnownDatasets(app_cache / "simlab.db")


def test_a_dataset_opened_by_hand_on_the_data_page_opens_from_a_link_without_asking(app_cache, tmp_path):
    folder = write_group_folder(tmp_path / "mine", n_groups=2, per_group=2)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    at.switch_page("pages/data.py").run()
    at.segmented_control(key="data_kind").set_value("folder").run()
    at.text_input[0].input(str(folder))
    next(b for b in at.button if b.label == "Use this dataset").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert f"folder:{folder.resolve()}" in KnownDatasets(app_cache / "simlab.db")

    again = linked(f"folder:{folder}", "pages/data.py")
    assert not question(again)
    assert again.session_state["dataset_spec"] == f"folder:{folder}"
    assert {m.label: m.value for m in again.metric}["Groups"] == "2"


def test_a_dataset_picked_in_the_sidebar_is_remembered(app_cache, tmp_path):
    folder = write_group_folder(tmp_path / "picked", n_groups=2, per_group=2)
    spec = f"folder:{folder}"
    assert spec in question(linked(spec))  # a link to it asks
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.session_state["recent_datasets"] = [spec]  # the picker offers it (as after a pick earlier in a session)
    at.run()
    at.sidebar.selectbox[0].set_value(spec).run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.session_state["dataset_spec"] == spec
    assert spec in KnownDatasets(app_cache / "simlab.db")
    assert not question(linked(spec))  # picked by hand once: a link to it opens it


def test_the_demo_and_the_servers_own_dataset_never_ask(app_cache, home):
    for spec in ("demo", home):
        at = linked(spec)
        assert not question(at) and at.session_state["dataset_spec"] == spec


def test_known_datasets_live_in_the_store_file_beside_the_runs(tmp_path):
    from simlab.store import Store

    db = tmp_path / "simlab.db"
    known = KnownDatasets(db)
    (tmp_path / "photos").mkdir()
    assert known.add(f"folder:{tmp_path}/photos/") == f"folder:{tmp_path / 'photos'}"
    assert f"folder:{tmp_path}/./photos" in known and "folder:/etc" not in known
    Store(db).list_runs()  # the runs' store opens the same file, its schema untouched by the extra table
    assert known.specs() == [f"folder:{tmp_path / 'photos'}"]
    assert normalise_spec("DEMO") == "demo" and normalise_spec(" csv:~/x.csv ") == f"csv:{Path.home() / 'x.csv'}"


# --------------------------------------------------------------------------- the password


@pytest.fixture
def throttle():
    auth.THROTTLE.reset()
    yield auth.THROTTLE
    auth.THROTTLE.reset()


@pytest.fixture
def password(app_cache, monkeypatch, throttle) -> str:
    monkeypatch.setenv("SIMLAB_PASSWORD", "correct horse")
    return "correct horse"


def submit(at: AppTest, text: str) -> str:
    at.text_input[0].input(text)
    at.button[0].click().run()
    assert not at.exception, [e.value for e in at.exception]
    return " ".join(e.value for e in at.error)


def test_a_set_password_is_asked_on_loopback_too(password):
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    assert not at.exception
    assert at.text_input[0].label == "Password" and not at.sidebar.selectbox  # nothing else is drawn
    assert submit(at, "guess") == "Wrong password."
    submit(at, password)
    assert not at.text_input or at.text_input[0].label != "Password"
    assert at.sidebar.selectbox[0].label == "Dataset"


def test_thirty_wrong_passwords_slow_down_are_logged_and_the_right_one_still_gets_in(password, throttle, caplog):
    caplog.set_level(logging.INFO, logger=auth.__name__)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    answers = [submit(at, f"guess {i}") for i in range(30)]
    assert answers[: auth.FREE_TRIES] == ["Wrong password."] * auth.FREE_TRIES
    assert answers[auth.FREE_TRIES].startswith("Wrong password. Wait 1 s")
    refused = [a for a in answers if a.startswith("Too many wrong passwords: try again in")]
    assert refused and all(a.startswith(("Wrong password.", "Too many")) for a in answers)
    checked = auth.THROTTLE.failures(auth.LOOPBACK_CLIENT)
    assert checked + len(refused) == 30 and checked < 30  # tries made while waiting are not even checked
    wrong_logs = [r for r in caplog.records if r.getMessage().startswith("wrong password from this machine")]
    assert len(wrong_logs) == checked
    assert len([r for r in caplog.records if "refused unchecked" in r.getMessage()]) == len(refused)

    for _ in range(10):  # the right password, once the backoff has passed
        time.sleep(auth.THROTTLE.wait(auth.LOOPBACK_CLIENT))
        answer = submit(at, password)
        if not answer:
            break
        assert answer.startswith("Too many wrong passwords")
    assert at.session_state["authenticated"] is True
    assert at.sidebar.selectbox[0].label == "Dataset"
    assert auth.THROTTLE.failures(auth.LOOPBACK_CLIENT) == 0  # in: the count starts again
    assert any(r.getMessage() == "login from this machine" for r in caplog.records)


def test_the_backoff_doubles_per_client_up_to_a_minute_and_never_locks_out():
    now = [0.0]
    throttle = auth.LoginThrottle(clock=lambda: now[0])
    waits = []
    for _ in range(30):  # each guess made as soon as it is allowed
        now[0] += throttle.wait("203.0.113.7")
        waits.append(throttle.failed("203.0.113.7"))
    assert waits[:3] == [0.0, 0.0, 0.0]
    assert waits[3:10] == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0] and set(waits[10:]) == {60.0}
    assert now[0] == sum(waits[:-1])  # 30 guesses cost about 25 minutes instead of a second
    assert throttle.wait("203.0.113.7") == 60.0 and throttle.wait("198.51.100.2") == 0.0  # per client
    now[0] += 59.0
    assert throttle.wait("203.0.113.7") == pytest.approx(1.0)
    now[0] += 1.0
    assert throttle.wait("203.0.113.7") == 0.0  # after the backoff the next try is checked
    throttle.succeeded("203.0.113.7")
    assert throttle.failures("203.0.113.7") == 0 and throttle.wait("203.0.113.7") == 0.0
