"""An analysis process: large requests are answered here, off the server's event loop.

The server starts `python -m markd.worker` with its configuration in the environment and talks over
the child's stdin/stdout, one request at a time: a request is a header (frame length, connection id,
is-local flag, peer length) then the peer text and the frame; the answer is a length and a pickled
`markd.core.Outcome`. EOF on stdin (the server stopped or died) ends the process.

Separate processes keep a long analysis from holding the server's GIL, keep its memory out of the
server (the server recycles a worker whose RSS grew), and make a crash cost one request.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import sys
from typing import Any, BinaryIO

REQUEST_HEADER = struct.Struct("<iqBi")  # frame length, connection id, is_local, peer length
ANSWER_HEADER = struct.Struct("<q")
CONFIG_ENV = "MARKD_WORKER_CONFIG"


def _read_exactly(stream: BinaryIO, size: int) -> bytes | None:
    chunks: list[bytes] = []
    remaining = size
    while remaining:
        chunk = stream.read(remaining)
        if not chunk:
            return None
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def main() -> int:
    # The protocol owns fd 1: anything printed by a library goes to stderr instead.
    channel_in = os.fdopen(os.dup(0), "rb", buffering=0)
    channel_out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    from markd import cache, limits, memory
    from markd.commands import ConnectionInfo, Dispatcher, NeedsServer
    from markd.core import process_frame

    config: dict[str, Any] = json.loads(os.environ.get(CONFIG_ENV, "{}"))
    memory.tune_allocator()
    sys.setrecursionlimit(max(sys.getrecursionlimit(), limits.RECURSION_LIMIT))
    if config.get("schema_cache_bytes") is not None:
        cache.configure(max_bytes=int(config["schema_cache_bytes"]))

    def needs_server(_command: dict[str, Any]) -> dict[str, Any]:
        raise NeedsServer

    dispatcher = Dispatcher(argv=list(config.get("argv", [])), parsed_options=dict(config.get("parsed", {})),
                            shutdown_enabled=bool(config.get("shutdown_enabled", True)),
                            redact_errors=bool(config.get("redact_errors", False)),
                            extra_commands={name: needs_server for name in config.get("server_commands", [])})
    while True:
        header = _read_exactly(channel_in, REQUEST_HEADER.size)
        if header is None:
            return 0
        frame_length, connection_id, is_local, peer_length = REQUEST_HEADER.unpack(header)
        peer = _read_exactly(channel_in, peer_length)
        frame = _read_exactly(channel_in, frame_length)
        if peer is None or frame is None:
            return 0
        connection = ConnectionInfo(connection_id, peer.decode("utf-8", "replace"), bool(is_local))
        try:
            result: tuple[str, Any] = ("outcome", process_frame(frame, connection, dispatcher))
        except MemoryError:
            result = ("MemoryError", None)  # the server answers for it, with the request's id
        del frame
        answer = pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
        del result
        channel_out.write(ANSWER_HEADER.pack(len(answer)))
        channel_out.write(answer)
        del answer
        memory.trim()


if __name__ == "__main__":
    sys.exit(main())
