"""Commands as readable text: extended JSON that keeps duplicate keys and leaves the fixed rules out."""

from __future__ import annotations

import json
from typing import Any

from bson import json_util

from tests.adversarial.rawbson import Doc

RULE_FIELDS = ("jsonSchema", "isRemoteSchema", "csfleEncryptionSchemas", "encryptionInformation")
_OPTIONS = json_util.JSONOptions(json_mode=json_util.JSONMode.RELAXED)


def to_json(value: Any, *, rules: bool = False) -> str:
    if isinstance(value, (Doc, dict)):
        pairs = value.items() if isinstance(value, Doc) else list(value.items())
        shown = [(k, v) for k, v in pairs if rules or k not in RULE_FIELDS]
        return "{" + ", ".join(f"{json.dumps(k)}: {to_json(v, rules=True)}" for k, v in shown) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(to_json(v, rules=True) for v in value) + "]"
    return json_util.dumps(value, json_options=_OPTIONS)
