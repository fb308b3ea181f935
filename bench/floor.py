"""The floor: a minimal uvloop server that answers every frame with a fixed, pre-encoded reply.

It frames the stream exactly as a real server must (header, length, whole frames), patches
`responseTo`, and writes the reply; nothing else. Measured against the same clients and reply sizes,
the time it takes is what transport and framing alone cost, so markd/floor is markd's own cost.

Before measuring, a client sets its connection's reply with one control frame (opCode
`CONTROL_SET_REPLY`, body = the whole reply frame to send); frames with any other opCode get that
reply. Run as `python -m bench.floor --port P`.
"""

from __future__ import annotations

import argparse
import asyncio
import struct

CONTROL_SET_REPLY = 0x4D4B_0001
_HEADER = struct.Struct("<iiii")
_DEFAULT_REPLY_BODY = b"\x00\x00\x00\x00\x00" + b"\x11\x00\x00\x00\x01ok\x00" + struct.pack("<d", 1.0) + b"\x00"


def control_frame(reply_frame: bytes) -> bytes:
    """The frame that makes the floor answer this connection's frames with `reply_frame`."""
    return _HEADER.pack(16 + len(reply_frame), 0, 0, CONTROL_SET_REPLY) + reply_frame


class FloorProtocol(asyncio.Protocol):
    __slots__ = ("buffer", "reply_tail", "transport")

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.reply_tail = _DEFAULT_REPLY_BODY  # everything after the 16-byte header
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        start = 0
        end = len(buffer)
        transport = self.transport
        assert transport is not None
        while end - start >= 16:
            length, request_id, _response_to, op_code = _HEADER.unpack_from(buffer, start)
            if end - start < length:
                break
            if op_code == CONTROL_SET_REPLY:
                self.reply_tail = bytes(buffer[start + 32 : start + length])
            else:
                tail = self.reply_tail
                transport.write(_HEADER.pack(16 + len(tail), 0, request_id, 2013) + tail)
            start += length
        if start:
            del buffer[:start]


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(FloorProtocol, "127.0.0.1", port, backlog=1024, reuse_address=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    port = parser.parse_args().port
    try:
        import uvloop

        uvloop.run(serve(port))
    except ImportError:
        asyncio.run(serve(port))


if __name__ == "__main__":
    main()
