"""Two ways to put a command to markd: in-process through `mark_command`, and over a real socket.

In-process the raw command goes through `markd.bsonvalues.decode` (what the server's codec uses) and
`markd.analysis.mark_command`, exactly as the server calls them; an exception that is not a
CommandError is what the server would answer InternalError.  Over the wire the raw bytes travel in a
hand-made OP_MSG frame (so duplicate keys reach markd's codec as sent) to a `MarkdProcess`.
"""

from __future__ import annotations

import socket
import struct
import traceback
from dataclasses import dataclass

from markd import bsonvalues
from markd.analysis import mark_command
from markd.errors import CommandError
from tests.adversarial import rawbson

_HEADER = struct.Struct("<iiii")
OP_MSG = 2013


@dataclass(frozen=True)
class Outcome:
    reply: bytes | None  # raw BSON reply document; None when the connection dropped
    crash: str = ""  # the exception signature when markd raised something other than CommandError
    collapsed: bool = False  # the decoder returned fewer keys than the bytes hold (duplicates dropped)


def crash_signature(exc: BaseException) -> str:
    """Exception type and the innermost markd frame."""
    frames = traceback.extract_tb(exc.__traceback__)
    for frame in reversed(frames):
        marker = frame.filename.rfind("/markd/")
        if marker >= 0 and "/tests/" not in frame.filename:
            return f"{type(exc).__name__} at {frame.filename[marker + 1:]}:{frame.name}"
    return type(exc).__name__


def in_process(raw: bytes) -> Outcome:
    """markd's answer to one marking command, in-process."""
    try:
        command = bsonvalues.decode(raw)
    except Exception as exc:  # the server answers a document it cannot decode with an error
        return Outcome(bsonvalues.encode({"ok": 0.0, "code": 22, "codeName": "InvalidBSON", "errmsg": str(exc)}))
    # A decoder that keeps the last of a repeated key and forgets it repeated hides duplicates from the analysis.
    recorded = getattr(bsonvalues, "has_duplicates", None)
    collapsed = rawbson.has_duplicates_raw(raw) and not (recorded is not None and recorded(command))
    try:
        reply = mark_command(command)
        return Outcome(bsonvalues.encode(reply), collapsed=collapsed)
    except CommandError as exc:
        return Outcome(bsonvalues.encode(exc.to_reply()), collapsed=collapsed)
    except Exception as exc:  # InternalError on the wire
        signature = crash_signature(exc)
        return Outcome(bsonvalues.encode({"ok": 0.0, "code": 1, "codeName": "InternalError", "errmsg": signature}),
                       crash=signature, collapsed=collapsed)


def op_msg(body: bytes, request_id: int) -> bytes:
    payload = struct.pack("<I", 0) + b"\x00" + body
    return _HEADER.pack(16 + len(payload), request_id, 0, OP_MSG) + payload


class Wire:
    """One TCP connection to a markd process; reconnects after a drop (which is reported as a crash)."""

    def __init__(self, port: int, timeout: float = 30.0) -> None:
        self.port = port
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.request_id = 0

    def _connect(self) -> socket.socket:
        if self.sock is None:
            self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout)
        return self.sock

    def _read(self, sock: socket.socket, size: int) -> bytes:
        data = bytearray()
        while len(data) < size:
            chunk = sock.recv(size - len(data))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return bytes(data)

    def send(self, raw: bytes) -> Outcome:
        self.request_id += 1
        sock = self._connect()
        try:
            sock.sendall(op_msg(raw, self.request_id))
            length, _, response_to, op_code = _HEADER.unpack(self._read(sock, 16))
            payload = self._read(sock, length - 16)
        except (ConnectionError, OSError):
            self.close()
            return Outcome(None, crash="connection dropped")
        if op_code != OP_MSG or response_to != self.request_id or payload[4] != 0:
            self.close()
            return Outcome(None, crash=f"unexpected reply frame (opCode {op_code})")
        flags = struct.unpack_from("<I", payload)[0]
        body = payload[5 : len(payload) - (4 if flags & 1 else 0)]
        return Outcome(body)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
