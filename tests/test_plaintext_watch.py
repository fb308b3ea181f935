"""The run-wide plaintext watch sees what tests send and would flag a value found in a log."""

from __future__ import annotations

from tests.support import plaintext_watch
from tests.support.process import raw_command


def test_values_in_skips_names_and_rules() -> None:
    command = {
        "find": "collection-name",
        "filter": {"ssn": "123-45-6789", "ref": "$other_field", "short": "abc"},
        "jsonSchema": {"properties": {"ssn": {"encrypt": {"algorithm": "AEAD_AES_256_CBC_HMAC_SHA_512-Random"}}}},
        "$db": "database-name",
    }
    assert plaintext_watch.values_in(command) == {"123-45-6789"}


def test_field_paths_given_as_strings_are_names() -> None:
    # markd's refusal log names these paths (path=address.city): they are fields, not document values.
    assert plaintext_watch.values_in({"distinct": "coll", "key": "address.city", "query": {"x": "secret-value"}}) \
        == {"secret-value"}
    pipeline = [{"$lookup": {"from": "other", "localField": "address.city", "foreignField": "postcode.area",
                             "as": "joined-docs", "pipeline": [{"$match": {"x": "inner-secret"}}]}},
                {"$match": {"localField": "not-a-path-here"}}]
    assert plaintext_watch.values_in({"aggregate": "coll", "pipeline": pipeline}) == {"inner-secret",
                                                                                      "not-a-path-here"}


def test_watch_records_real_commands_and_flags_a_planted_log_line(client) -> None:
    raw_command(client, "db", {"find": "coll", "filter": {"name": "watch-canary-7f3a"}})
    assert "watch-canary-7f3a" in plaintext_watch.sent_values
    assert plaintext_watch.leaked("... filter=watch-canary-7f3a ...") == ["watch-canary-7f3a"]
    assert plaintext_watch.leaked("command=find ns=db.coll outcome=ok") == []
    # A collection name sent as a value is a name where markd logs it as a namespace.
    raw_command(client, "db", {"find": "coll", "filter": {"other": "namespace-canary"}})
    assert plaintext_watch.leaked("command=find ns=db.namespace-canary outcome=ok") == []
    assert plaintext_watch.leaked('{"attr": {"ns": "db.namespace-canary"}}') == []
