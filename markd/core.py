"""One frame in, one outcome out: the whole request path without sockets or an event loop.

The server runs it on the event loop for small requests and in an analysis process (markd.worker)
for large ones; both get the same `Outcome`, which says what to send, what to count and log, and
whether the connection must close or the daemon stop.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from typing import Any

import bson
from bson.errors import InvalidBSON

from markd import bsonvalues, refusals
from markd.analysis import MARKING_COMMANDS, patterns
from markd.commands import UNKNOWN_COMMAND, ConnectionInfo, Dispatcher, NeedsServer, ShutdownCommand
from markd.errors import CommandError
from markd.wire import OpMsg, OpQuery, ProtocolError, encode_op_msg, encode_op_reply, parse_message

HANDSHAKE_NAMES = ("hello", "isMaster", "ismaster")
# Innermost stack frames kept when a bug is logged: where it broke, never a 30 KB line.
STACK_FRAMES = 12


# A plain class, not a dataclass: creating one costs ~4 M instructions at start-up (issue 15).
class Outcome:
    """What one request came to."""

    __slots__ = ("bug", "close_reason", "marking", "more_to_come", "name", "namespace", "needs_server", "outcome",
                 "refusal", "reply", "request_bytes", "request_id", "seconds", "shutdown")

    def __init__(self, reply: bytes | None = None, name: str = "?", namespace: str = "", outcome: str = "ok",
                 seconds: float = 0.0, request_bytes: int = 0, request_id: int = 0, more_to_come: bool = False,
                 marking: bool = False, close_reason: str | None = None, shutdown: bool = False,
                 needs_server: bool = False, bug: dict[str, str] | None = None,
                 refusal: dict[str, Any] | None = None) -> None:
        self.reply = reply
        self.name = name
        self.namespace = namespace
        self.outcome = outcome
        self.seconds = seconds
        self.request_bytes = request_bytes
        self.request_id = request_id
        self.more_to_come = more_to_come
        self.marking = marking
        self.close_reason = close_reason  # the stream is unusable: close this connection
        self.shutdown = shutdown  # the shutdown command: no reply, the daemon stops
        self.needs_server = needs_server  # a command only the server process can answer (it has the state)
        self.bug = bug  # an exception escaped a handler: its type and stack, logged
        self.refusal = refusal  # a marking command refused: its code, rule and names, logged

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"Outcome({fields})"

    def log_fields(self, connection: ConnectionInfo) -> dict[str, Any]:
        return {"conn": connection.connection_id, "command": self.name, "ns": self.namespace,
                "outcome": self.outcome, "durationMicros": int(self.seconds * 1e6),
                "requestBytes": self.request_bytes, "replyBytes": len(self.reply or b"")}


def command_name(command: dict[str, Any]) -> str:
    return next(iter(command), "")


def namespace(command: dict[str, Any]) -> str:
    name = command_name(command)
    target = command.get(name)
    database = command.get("$db", "")
    if name == "explain" and isinstance(target, dict):
        inner = command_name(target)
        database = target.get("$db", database)
        target = target.get(inner)
    return f"{database}.{target}" if isinstance(target, str) else str(database)


def where(exc: BaseException) -> dict[str, str]:
    """An exception's type and innermost stack, without its message: messages may quote values."""
    frames = traceback.extract_tb(exc.__traceback__)[-STACK_FRAMES:]
    return {"error": type(exc).__name__,
            "stack": " <- ".join(f"{os.path.basename(f.filename)}:{f.lineno}:{f.name}" for f in reversed(frames))}


def process_frame(frame: bytes, connection: ConnectionInfo, dispatcher: Dispatcher,
                  slice_secs: float | None = None) -> Outcome:
    """Answer one whole frame. `slice_secs` arms the pattern meter's slice: past it,
    `patterns.SliceExpired` propagates and the caller reruns the frame elsewhere."""
    started = time.perf_counter()
    try:
        message = parse_message(frame)
    except ProtocolError as exc:
        return Outcome(close_reason=str(exc), request_bytes=len(frame), outcome="ProtocolError")
    if isinstance(message, OpQuery):
        return _op_query(message, connection, dispatcher, len(frame))
    assert isinstance(message, OpMsg)
    result = Outcome(request_bytes=len(frame), request_id=message.request_id, more_to_come=message.more_to_come)
    try:
        if message.error is not None:
            raise message.error
        command = message.command
        result.name = dispatcher.reported_name(command_name(command))
        result.marking = result.name in MARKING_COMMANDS
        result.namespace = namespace(command) if result.name != UNKNOWN_COMMAND else str(command.get("$db", ""))
        if "$db" not in command:
            raise CommandError(40571, "OP_MSG requests require a $db argument")
        with patterns.metered(slice_secs=slice_secs):
            reply = dispatcher.handle(command, connection)
        body = bsonvalues.encode(reply)
    except ShutdownCommand:
        result.shutdown = True
        result.seconds = time.perf_counter() - started
        return result
    except NeedsServer:
        result.needs_server = True
        return result
    except CommandError as exc:
        result.outcome = exc.code_name
        if result.marking:
            result.refusal = refusals.log_attributes(exc)
        body = bson.encode(exc.to_reply(dispatcher.redact_errors))
    except InvalidBSON as exc:
        result.outcome = "InvalidBSON"
        body = bson.encode(CommandError(22, str(exc)).to_reply())
    except RecursionError as exc:  # nesting is bounded before analysis; this is a bug, but not the daemon's end
        result.bug = where(exc)
        result.outcome = "InternalError"
        body = bson.encode(CommandError(1, "markd internal error: RecursionError").to_reply())
    except Exception as exc:  # a bug must cost one command, never the daemon
        result.bug = where(exc)
        result.outcome = "InternalError"
        body = bson.encode(CommandError(1, f"markd internal error: {type(exc).__name__}").to_reply())
    result.seconds = time.perf_counter() - started
    if not message.more_to_come:
        result.reply = encode_op_msg(message.request_id, body)
    return result


def reply_to(result: Outcome, document: dict[str, Any]) -> Outcome:
    """`result` answered with `document` (for what the server answers itself)."""
    if not result.more_to_come:
        result.reply = encode_op_msg(result.request_id, bsonvalues.encode(document))
    return result


def _op_query(message: OpQuery, connection: ConnectionInfo, dispatcher: Dispatcher, size: int) -> Outcome:
    result = Outcome(request_bytes=size, request_id=message.request_id)
    try:
        query = bsonvalues.decode(message.query)
    except (InvalidBSON, RecursionError):
        result.close_reason = "invalid OP_QUERY: InvalidBSON"
        result.outcome = "ProtocolError"
        return result
    # Drivers wrap a legacy command with read preference as {$query: {...}}.
    if "$query" in query and isinstance(query["$query"], dict):
        query = query["$query"]
    result.name = dispatcher.reported_name(command_name(query))
    if message.collection.endswith(".$cmd") and result.name in HANDSHAKE_NAMES:
        reply = dispatcher.handle(query, connection)
    else:
        reply = CommandError(
            352,
            f"Unsupported OP_QUERY command: {command_name(query)}. The client driver may require an upgrade. "
            "For more details see https://dochub.mongodb.org/core/legacy-opcode-removal",
            "UnsupportedOpQueryCommand",
        ).to_reply()
        result.outcome = "UnsupportedOpQueryCommand"
    result.reply = encode_op_reply(message.request_id, bson.encode(reply))
    return result


def log_outcome(log: logging.Logger, result: Outcome, connection: ConnectionInfo) -> None:
    if result.bug is not None:
        log.error("internal error while handling a command",
                  extra={"attr": {"command": result.name, **result.bug}})
    if result.refusal is not None:
        # Why the analysis refused, in names only (`markd check` explains the same refusal in words).
        log.info("command refused", extra={"attr": {"conn": connection.connection_id, "command": result.name,
                                                    "ns": result.namespace, **result.refusal}})
    if log.isEnabledFor(logging.DEBUG) and result.close_reason is None:
        log.debug("command", extra={"attr": result.log_fields(connection)})
