"""The Python half of mongo_crypt_v1.so: what its two `extern "Python"` functions do.

`analyze` is the daemon's request path (`markd.core.process_frame`) for one OP_MSG command, minus
the socket: the command's bytes go in as the body of an OP_MSG, the daemon's decoder and error
handling take them, and the dispatcher answers marking commands by the daemon's route to
`markd.analysis` (`markd.commands.marking_reply`).  The reply is the bytes the daemon would send;
a refusal is the daemon's error (code and message), reported as a status.

`Bridge` is what the library's init code binds to cffi; it never lets an exception out.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import bson

import markd
from markd import bsonvalues, commands, core
from markd.analysis import MARKING_COMMANDS
from markd.commands import UNKNOWN_COMMAND, ConnectionInfo, Dispatcher
from markd.errors import CommandError
from markd.wire import encode_op_msg

log = logging.getLogger("markd.crypt_shared")

# mongo_crypt_v1_error values (mongo_crypt-v1.h).  The real library reports a refusal as
# MONGO_CRYPT_V1_ERROR_EXCEPTION with the server's error code, as markd does here.
ERROR_EXCEPTION = 2
ERROR_ENOMEM = 1

# What the C side reads back (mongo_crypt_v1.c: MARKD_CS_REPLY / MARKD_CS_FAILED).
REPLY = 1
FAILED = 2

# An OP_MSG reply frame: 16 bytes of header, 4 of flags, the section kind, then the body.
_REPLY_BODY = 21
_CALLER = ConnectionInfo(0, "mongo_crypt_v1", True)

# The analysis was written for the daemon's one event loop: its caches are not made for threads.
# Drivers call from many at once, so one analysis runs at a time (under the GIL they would not
# have run in parallel anyway).
_analysis_lock = threading.Lock()


def _new_lock_after_fork() -> None:
    # A child forked while another thread held the lock would otherwise wait for it forever.
    global _analysis_lock
    _analysis_lock = threading.Lock()


os.register_at_fork(after_in_child=_new_lock_after_fork)


class MarkingDispatcher(Dispatcher):
    """What the library answers: marking commands only (no handshake, no admin commands)."""

    def reported_name(self, name: str) -> str:
        return name if name in MARKING_COMMANDS else UNKNOWN_COMMAND

    def handle(self, command: dict[str, Any], connection: ConnectionInfo) -> dict[str, Any]:
        with _analysis_lock:
            # In-process: libmongocrypt puts an explained command's QE rules inside it for crypt_shared.
            return commands.marking_reply(command, in_process=True)


# A host has no command line for the library: MARKD_REDACT_ERRORS=1 is its --redactErrors.
_DISPATCHER = MarkingDispatcher(argv=[], parsed_options={}, shutdown_enabled=False,
                                redact_errors=os.environ.get("MARKD_REDACT_ERRORS", "") == "1")


class AnalysisBug(CommandError):
    """markd failed on a command (a bug): answered, as by the daemon, with code 1 and the type's name."""


def analyze(document: bytes) -> bytes:
    """The reply document to one marking command, byte for byte the daemon's; CommandError if refused."""
    outcome = core.process_frame(encode_op_msg(0, document), _CALLER, _DISPATCHER)
    if outcome.bug is not None:
        # Type and stack only: an exception's message may quote a document's values.
        log.error("internal error in mongo_crypt_v1 analysis", extra={"attr": {"command": outcome.name, **outcome.bug}})
    if outcome.reply is None:  # the frame is built here: nothing else can come of it
        raise AnalysisBug(1, f"markd internal error: {outcome.close_reason or outcome.outcome}")
    body = outcome.reply[_REPLY_BODY:]
    if outcome.outcome != "ok":
        error = bson.decode(body)
        raised = AnalysisBug if outcome.bug is not None else CommandError
        raise raised(int(error["code"]), str(error["errmsg"]), str(error["codeName"]))
    return body


def check_versions(markd_version: str, server_version: str) -> None:
    """The library was built from this markd: else its version would not be the daemon's."""
    if (markd_version, server_version) != (markd.__version__, commands.SERVER_VERSION):
        raise CommandError(
            1, f"markd: this mongo_crypt_v1 library was built for markd {markd_version} (server {server_version}) "
               f"but markd {markd.__version__} (server {commands.SERVER_VERSION}) is installed: reinstall markd "
               "(pip install .) to rebuild it")


# One small command per scheme, analysed at lib_create: the analysis imports what it needs lazily,
# and a broken installation must fail lib_create, not the application's first command.
_WARM_UP = (
    {"find": "c", "filter": {"x": 1}, "jsonSchema": {}, "isRemoteSchema": False, "$db": "d"},
    {"find": "c", "filter": {"x": 1}, "encryptionInformation": {"type": 1, "schema": {"d.c": {
        "escCollection": "enxcol_.c.esc", "ecocCollection": "enxcol_.c.ecoc", "fields": []}}}, "$db": "d"},
)


def warm_up() -> None:
    """Analyse the warm-up commands; AnalysisBug if the analysis cannot run (a refusal would be fine)."""
    for command in _WARM_UP:
        try:
            analyze(bsonvalues.encode(command))
        except AnalysisBug:
            raise
        except CommandError:
            pass


class Bridge:
    """The library's two calls into Python, on cffi's objects of the loaded library."""

    def __init__(self, ffi: Any, lib: Any) -> None:
        self.ffi = ffi
        self.lib = lib

    def start(self, result: Any) -> int:
        """lib_create: markd is importable and is the markd the library was built from."""
        try:
            built = (self.ffi.string(self.lib.markd_cs_built_markd_version()).decode(),
                     self.ffi.string(self.lib.markd_cs_built_server_version()).decode())
            check_versions(*built)
            warm_up()
        except CommandError as exc:
            return self._fail(result, exc)
        except BaseException as exc:
            return self._fail(result, self._bug(exc))
        return REPLY

    def analyze(self, document: Any, size: int, result: Any) -> int:
        """analyze_query: the reply in `result`, or the error."""
        try:
            reply = analyze(self.ffi.buffer(document, size)[:])
        except CommandError as exc:
            return self._fail(result, exc)
        except BaseException as exc:  # MemoryError, KeyboardInterrupt...: still a status, never a raise
            return self._fail(result, self._bug(exc))
        if self.lib.markd_cs_set_reply(result, reply, len(reply)) != 0:
            self.lib.markd_cs_set_error(result, ERROR_ENOMEM, 1, b"markd: out of memory for the reply")
            return FAILED
        return REPLY

    @staticmethod
    def _bug(exc: BaseException) -> CommandError:
        # Type and stack only: an exception's message may quote a document's values.
        log.error("internal error in mongo_crypt_v1 analysis", extra={"attr": core.where(exc)})
        return AnalysisBug(1, f"markd internal error: {type(exc).__name__}")

    def _fail(self, result: Any, error: CommandError) -> int:
        message = error.errmsg.encode("utf-8", "replace").replace(b"\0", b"?")
        self.lib.markd_cs_set_error(result, ERROR_EXCEPTION, error.code, message)
        return FAILED
