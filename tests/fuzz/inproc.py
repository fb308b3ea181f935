"""markd's analysis called in-process exactly as the server calls it, replies as the wire would carry them."""

from __future__ import annotations

import traceback
from typing import Any

from markd import bsonvalues
from markd.analysis import mark_command
from markd.errors import CommandError


def mark(command: dict[str, Any]) -> dict[str, Any]:
    """The reply markd gives a marking command: through BSON both ways; a stray exception is code 1."""
    try:
        decoded = bsonvalues.decode(bsonvalues.encode(command))
        reply = mark_command(decoded)
        encoded = bsonvalues.encode(reply)
    except CommandError as exc:
        return exc.to_reply()
    except Exception:  # what the server would turn into InternalError
        return {"ok": 0.0, "code": 1, "codeName": "InternalError", "errmsg": traceback.format_exc()}
    return bsonvalues.decode(encoded)
