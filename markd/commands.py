"""Command dispatch: the handshake and admin commands, and the route to query analysis.

Pure except for the clock (`localTime`) and the `on_shutdown` callback the server hands in.
"""

from __future__ import annotations

import datetime
import os
import sys
from collections.abc import Callable
from typing import Any, NamedTuple

import markd
from markd import analysis, limits
from markd.errors import CommandError
from markd.wire.codec import MAX_BSON_SIZE, MAX_MESSAGE_SIZE

# The newest server line's wire version that pymongo 4.20 accepts; libmongocrypt needs >= 17 to send
# create/createIndexes and >= 26 for commands over several collections (csfleEncryptionSchemas).
MAX_WIRE_VERSION = 27
SERVER_VERSION = "8.2.0"
MAX_WRITE_BATCH_SIZE = 100_000

HANDSHAKE_COMMANDS = frozenset({"hello", "isMaster", "ismaster"})
ADMIN_COMMANDS = frozenset({"buildInfo", "buildinfo", "getCmdLineOpts", "ping", "endSessions", "shutdown"})
# How logs and metrics name a command markd does not know: its name is any string a client chose,
# which could carry data and would give Prometheus a label per typo.
UNKNOWN_COMMAND = "(unknown)"


class ShutdownCommand(Exception):
    """The shutdown command was accepted: as mongocryptd, no reply; the server stops."""


class NeedsServer(Exception):
    """A command only the server process can answer (raised where it runs elsewhere)."""


# Options mongod redacts in getCmdLineOpts (its `redact: true` options); markd accepts none of them, but a
# driver's spawn arguments or an operator's copy of a mongod command line may carry them.
_REDACTED_OPTIONS = frozenset(name.lower() for name in (
    "tlsCertificateKeyFilePassword", "tlsClusterPassword", "sslPEMKeyPassword", "sslClusterPassword",
    "kmipClientCertificatePassword", "ldapQueryPassword",
))


def censored_argv(argv: list[str]) -> list[str]:
    """argv as mongod's getCmdLineOpts shows it: the value of a password option replaced by <password>."""
    censored = list(argv)
    for index, argument in enumerate(censored):
        switch, equals, _ = argument.partition("=")
        if switch.lstrip("-").lower() not in _REDACTED_OPTIONS or not switch.startswith("-"):
            continue
        if equals:
            censored[index] = f"{switch}=<password>"
        elif index + 1 < len(censored):
            censored[index + 1] = "<password>"
    return censored


# A NamedTuple and a plain class, not dataclasses: creating one costs ~4 M instructions at start-up (issue 15).
class ConnectionInfo(NamedTuple):
    """Who sent a request."""

    connection_id: int
    peer: str
    is_local: bool


class Dispatcher:
    """Turns one decoded command into one reply document."""

    def __init__(self, argv: list[str], parsed_options: dict[str, Any], shutdown_enabled: bool = True,
                 redact_errors: bool = False,
                 extra_commands: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] | None = None) -> None:
        self.argv = argv
        self.parsed_options = parsed_options
        self.shutdown_enabled = shutdown_enabled  # --disableShutdownCommand turns it off (shared hosts)
        self.redact_errors = redact_errors  # --redactErrors: values quoted by error messages become their types
        self.extra_commands = extra_commands if extra_commands is not None else {}

    def reported_name(self, name: str) -> str:
        """`name` if markd knows the command, else UNKNOWN_COMMAND."""
        known = (name in HANDSHAKE_COMMANDS or name in analysis.MARKING_COMMANDS or name in ADMIN_COMMANDS
                 or name in self.extra_commands)
        return name if known else UNKNOWN_COMMAND

    def handle(self, command: dict[str, Any], connection: ConnectionInfo) -> dict[str, Any]:
        if not command:
            raise CommandError(59, "no such command: ''", "CommandNotFound")
        name = next(iter(command))
        if name in HANDSHAKE_COMMANDS:
            reply = hello_reply(name, connection.connection_id)
            if command.get("helloOk") is True:
                # As mongod: tells a driver that opened with legacy isMaster that it may use hello from now on.
                reply["helloOk"] = True
            return reply
        if name in analysis.MARKING_COMMANDS:
            return marking_reply(command)
        if name in ("buildInfo", "buildinfo"):
            return build_info()
        if name == "getCmdLineOpts":
            if command.get("$db") != "admin":  # an admin-only command in mongod
                raise CommandError(13, "getCmdLineOpts may only be run against the admin database.",
                                   "Unauthorized")
            return {"argv": censored_argv(self.argv), "parsed": self.parsed_options, "ok": 1.0}
        if name in ("ping", "endSessions"):
            return {"ok": 1.0}
        if name == "shutdown":
            # mongocryptd's shutdown runs on any database and never replies (the process exits). It has
            # no auth and listens on localhost only, so markd also refuses it from another host.
            if not self.shutdown_enabled:
                raise CommandError(13, "shutdown is disabled on this markd (--disableShutdownCommand)",
                                   "Unauthorized")
            if not connection.is_local:
                raise CommandError(13, "shutdown must run from localhost when running db without auth",
                                   "Unauthorized")
            raise ShutdownCommand
        handler = self.extra_commands.get(name)
        if handler is not None:
            return handler(command)
        raise CommandError(59, f"no such command: '{name}'", "CommandNotFound")


def marking_reply(command: dict[str, Any], *, in_process: bool = False) -> dict[str, Any]:
    """The reply to a command libmongocrypt sends for marking: the daemon's route to the analysis, and
    all the in-process library (markd.crypt_shared, `in_process`) answers."""
    name = next(iter(command), "")
    if name not in analysis.MARKING_COMMANDS:
        raise CommandError(59, f"no such command: '{name}'", "CommandNotFound")
    limits.check_sub_pipelines(command)  # mongod's parser limit, before the analysis recurses
    return analysis.mark_command(command, in_process=in_process)


def hello_reply(name: str, connection_id: int) -> dict[str, Any]:
    reply: dict[str, Any] = {}
    if name == "hello":
        reply["isWritablePrimary"] = True
    else:
        reply["ismaster"] = True
    reply.update(
        {
            "iscryptd": True,
            "maxBsonObjectSize": MAX_BSON_SIZE,
            "maxMessageSizeBytes": MAX_MESSAGE_SIZE,
            "maxWriteBatchSize": MAX_WRITE_BATCH_SIZE,
            "localTime": datetime.datetime.now(datetime.timezone.utc),
            "connectionId": connection_id,
            "minWireVersion": 0,
            "maxWireVersion": MAX_WIRE_VERSION,
            "readOnly": False,
            "ok": 1.0,
        }
    )
    return reply


def build_info() -> dict[str, Any]:
    major, minor, patch = (int(part) for part in SERVER_VERSION.split("."))
    return {
        "version": SERVER_VERSION,
        "versionArray": [major, minor, patch, 0],
        "gitVersion": f"markd-{markd.__version__}",
        "markdVersion": markd.__version__,
        "modules": [],
        "allocator": "system",
        "javascriptEngine": "none",
        "sysInfo": "deprecated",
        "bits": 64,
        "debug": False,
        "maxBsonObjectSize": MAX_BSON_SIZE,
        "buildEnvironment": {"target_os": sys.platform, "target_arch": os.uname().machine},
        "storageEngines": [],
        "ok": 1.0,
    }
