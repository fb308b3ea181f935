"""--redactErrors: error replies print each value they quote from the command as its type name.

Without the flag the messages are mongocryptd's, values included (applications match them word for
word); with it (or `markd.redactErrors` in YAML) the structure stays and each value becomes its type.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pymongo.errors import OperationFailure

from tests.support.crypt import CryptDriver, new_uuid
from tests.support.process import MarkdProcess, raw_command

KEY = new_uuid()
DET = "AEAD_AES_256_CBC_HMAC_SHA_512-Deterministic"
SCHEMA = {"bsonType": "object", "properties": {
    "ssn": {"encrypt": {"keyId": [KEY], "algorithm": DET, "bsonType": "string"}},
    "doc": {"bsonType": "object", "properties": {
        "pin": {"encrypt": {"keyId": [KEY], "algorithm": DET, "bsonType": "int"}}}}}}

# command, mongocryptd's message, the redacted message
CASES = [
    ({"find": "coll", "filter": {"ssn": {"$regex": "^123-45"}}},
     "Invalid match expression operator on encrypted field 'ssn': { ssn: { $regex: \"^123-45\" } }",
     "Invalid match expression operator on encrypted field 'ssn': { ssn: { $regex: string } }"),
    ({"find": "coll", "filter": {"ssn": "123-45-6789"}, "collation": {"locale": "fr"}},
     "cannot apply non-simple collation when comparing to element ssn: \"123-45-6789\" with client-side "
     "encryption",
     "cannot apply non-simple collation when comparing to element ssn: string with client-side encryption"),
    ({"find": "coll", "filter": {"doc": {"$eq": [5, 6]}}},
     "$eq to array predicate is illegal for prefix of encrypted path: { doc: { $eq: [ 5, 6 ] } }",
     "$eq to array predicate is illegal for prefix of encrypted path: { doc: { $eq: [ int, int ] } }"),
    ({"find": "coll", "filter": {"$where": "this.ssn == '123-45-6789'"}},
     "Unsupported match expression operator for encryption: { $where: \"this.ssn == '123-45-6789'\" }",
     "Unsupported match expression operator for encryption: { $where: string }"),
]


def _refusals(daemon: MarkdProcess) -> list[str]:
    with daemon.client() as client:
        replies = [raw_command(client, "db", {**command, "jsonSchema": SCHEMA, "isRemoteSchema": False})
                   for command, _, _ in CASES]
    assert all(reply["ok"] == 0.0 for reply in replies), replies
    return [str(reply["errmsg"]) for reply in replies]


def test_messages_quote_values_as_mongocryptd_does_by_default():
    with MarkdProcess() as daemon:
        assert _refusals(daemon) == [shown for _, shown, _ in CASES]


@pytest.mark.parametrize("how", ["flag", "yaml"])
def test_redacted_messages_show_types_in_place_of_values(how: str, tmp_path: Path):
    args = ["--redactErrors"]
    if how == "yaml":
        config = tmp_path / "markd.yaml"
        config.write_text("markd:\n  redactErrors: true\n")
        args = ["--config", str(config)]
    with MarkdProcess(args=args) as daemon:
        assert _refusals(daemon) == [redacted for _, _, redacted in CASES]
        with daemon.client() as client:
            options: Any = client.admin.command("getCmdLineOpts")["parsed"]
        assert options["markd"]["redactErrors"] is True


def test_the_driver_sees_the_redacted_message():
    # libmongocrypt's mark_command callback gets markd's reply as pymongo's _EncryptionIO would.
    with MarkdProcess(args=["--redactErrors"]) as daemon:
        driver = CryptDriver(daemon.uri, schema_map={"db.coll": SCHEMA})
        try:
            with pytest.raises(OperationFailure) as refused:
                driver.encrypt("db", {"find": "coll", "filter": {"ssn": {"$regex": "^123-45"}}})
        finally:
            driver.close()
    assert "{ ssn: { $regex: string } }" in str(refused.value)
    assert "123-45" not in str(refused.value)
