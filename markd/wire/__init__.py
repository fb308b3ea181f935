"""Sans-IO MongoDB wire protocol: bytes in, messages out; replies to bytes."""

from markd.wire.codec import (
    MAX_MESSAGE_SIZE,
    FrameReader,
    Message,
    OpMsg,
    OpQuery,
    ProtocolError,
    encode_op_msg,
    encode_op_reply,
    frame_cost,
    parse_message,
)

__all__ = [
    "MAX_MESSAGE_SIZE",
    "FrameReader",
    "Message",
    "OpMsg",
    "OpQuery",
    "ProtocolError",
    "encode_op_msg",
    "encode_op_reply",
    "frame_cost",
    "parse_message",
]
