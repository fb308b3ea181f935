"""The daemon's pure core in-process: one frame in, one reply frame (decoded) out, no sockets."""

from __future__ import annotations

import struct
from functools import lru_cache
from typing import Any

import bson

from markd.commands import ConnectionInfo
from markd.config import Settings
from markd.server import MarkdServer

INTERNAL_ERROR = 1
_CONNECTION = ConnectionInfo(1, "127.0.0.1:1", True)


class CrashFinding(AssertionError):
    """markd answered InternalError (code 1): an exception escaped a handler."""


@lru_cache(maxsize=1)
def core_server() -> MarkdServer:
    return MarkdServer(Settings(pidfile=""), ["markd"], {})


def reply_document(reply: bytes) -> dict[str, Any]:
    """The one document of an OP_MSG or OP_REPLY frame."""
    length, _request_id, _response_to, op_code = struct.unpack_from("<iiii", reply)
    assert length == len(reply), "reply messageLength does not match its size"
    if op_code == 2013:
        assert reply[20] == 0, "reply section is not kind 0"
        return bson.decode(reply[21:])
    assert op_code == 1, f"unexpected reply opCode {op_code}"
    return bson.decode(reply[36:])


def handle_frame(frame: bytes) -> dict[str, Any] | None:
    """The reply markd's core gives one frame; ProtocolError propagates (the connection is closed)."""
    reply = core_server().handle_frame(frame, _CONNECTION)
    if reply is None:
        return None
    document = reply_document(reply)
    if document.get("code") == INTERNAL_ERROR:
        raise CrashFinding(f"InternalError reply to frame {frame!r}: {document}")
    return document


def known_crash(frame: bytes) -> str | None:
    """The id of the known finding a crashing frame reproduces (see docs/robustness.md), or None."""
    from markd.wire import ProtocolError, parse_message

    try:
        parse_message(frame)  # decodes the command too: where the known crashes lived
    except ProtocolError:
        return None
    except Exception as exc:
        from tests.fuzz.known import known_id

        return known_id(exc)
    return None
