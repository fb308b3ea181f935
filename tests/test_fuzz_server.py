"""Bad input over a real socket: markd answers or closes that connection, and keeps serving everyone else.

Each example opens a raw connection to a real markd, sends a mutated frame (in random chunks),
reads what comes back for a moment, and goes away (mid-frame, often).  After every example a
well-behaved pymongo client on its own connection must still get a `hello` answer; at the end
markd's open file descriptors are back to where they started.
"""

from __future__ import annotations

import socket
import struct
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz import frames
from tests.fuzz.budget import examples
from tests.fuzz.core import known_crash, reply_document
from tests.fuzz.load import fd_count
from tests.support.process import PATIENCE, MarkdProcess, RawConnection, poll_until

SERVER = settings(max_examples=examples(80), deadline=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def daemon():
    workdir = Path(tempfile.mkdtemp(prefix="markd-fuzz-"))
    with MarkdProcess(workdir=workdir, args=["--logpath", str(workdir / "markd.log")]) as process:
        client = process.client()
        client.admin.command("hello")
        yield process, client
        client.close()


def _read_replies(sock: socket.socket, wait: float) -> list[bytes]:
    """Whole reply frames received within `wait` seconds (until the server closes or goes quiet)."""
    sock.settimeout(wait)
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except (TimeoutError, OSError):
        pass
    replies = []
    while len(data) >= 16:
        length = struct.unpack_from("<i", data)[0]
        if length < 16 or len(data) < length:
            break
        replies.append(data[:length])
        data = data[length:]
    return replies


def _send_bad(port: int, payload: bytes, cuts: list[int]) -> list[bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        previous = 0
        try:
            for cut in [*sorted(cuts), len(payload)]:
                sock.sendall(payload[previous:cut])
                previous = cut
        except OSError:
            return []  # markd closed on us mid-send: fine
        return _read_replies(sock, 0.05)


def _assert_serving(daemon_and_client) -> None:
    process, client = daemon_and_client
    assert process.process.poll() is None, "markd died"
    assert client.admin.command("hello")["iscryptd"] is True


@SERVER
@given(frames.mutated_frame(), st.lists(st.integers(0, 400), max_size=3))
def test_bad_frames_never_stop_the_daemon(daemon, payload, cuts):
    process, _ = daemon
    for reply in _send_bad(process.port, payload, [c for c in cuts if c < len(payload)]):
        document = reply_document(reply)
        if document.get("code") == 1:
            assert known_crash(payload) is not None, f"InternalError reply to {payload!r}: {document}"
    _assert_serving(daemon)


def test_client_gone_mid_reply_and_mid_frame(daemon):
    process, _ = daemon
    hello = frames.SEEDS["op_msg_hello"]
    for _ in range(20):
        with socket.create_connection(("127.0.0.1", process.port)) as sock:
            sock.sendall(hello * 200)  # 200 replies nobody reads
        with socket.create_connection(("127.0.0.1", process.port)) as sock:
            sock.sendall(hello[:7])  # half a header
        with socket.create_connection(("127.0.0.1", process.port)) as sock:
            sock.sendall(struct.pack("<i", 48_000_000) + hello[4:])  # a big frame that never comes
    _assert_serving(daemon)


def test_impossible_lengths_close_only_that_connection(daemon):
    process, _ = daemon
    for length in (0, 15, -1, 48_000_001, 2**31 - 1):
        with RawConnection(process.port) as connection:
            connection.send(struct.pack("<iiii", length, 1, 0, 2013) + b"\x00" * 32)
            connection.sock.settimeout(PATIENCE)
            try:
                assert connection.sock.recv(65536) == b"", "markd answered a frame it cannot read"  # EOF
            except ConnectionResetError:
                pass  # closed with a reset: closed too
        _assert_serving(daemon)


def test_no_file_descriptors_leak_after_bad_clients(daemon):
    process, _ = daemon
    baseline = fd_count(process.process.pid)
    for name in frames.SEED_NAMES:
        payload = frames.SEEDS[name]
        for cut in range(0, len(payload), max(1, len(payload) // 8)):
            with socket.create_connection(("127.0.0.1", process.port)) as sock:
                sock.sendall(payload[:cut])
    poll_until(lambda: fd_count(process.process.pid) <= baseline, f"markd's descriptors to return to {baseline}",
               interval=0.1)
    _assert_serving(daemon)
