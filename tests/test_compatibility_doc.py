"""docs/compatibility.md is generated from the code and holds against a running markd.

The document lists every error code markd can return (scripts/compatibility.py collects them from the error
tables and an AST scan of markd/). These tests fail when the file and the code disagree, when a code lacks
provenance or a raise site cannot be resolved, and prove a few rows by sending the command over a socket.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from bson.binary import Binary
from pymongo import MongoClient

from tests.support.process import MarkdProcess, raw_command

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "compatibility.py"
DOCUMENT = ROOT / "docs" / "compatibility.md"


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("compatibility_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def test_document_matches_the_code() -> None:
    checked = subprocess.run([sys.executable, str(SCRIPT), "--check"], cwd=ROOT, capture_output=True, text=True,
                             timeout=300)
    assert checked.returncode == 0, checked.stderr


def test_check_refuses_missing_provenance_and_unresolved_sites(monkeypatch: pytest.MonkeyPatch) -> None:
    script = _script()
    scan = script.collect()
    assert script.problems(scan) == []
    row = next(row for row in scan.rows.values() if row.code == 51092)
    monkeypatch.delitem(script.PROVENANCE, 51092)
    assert any("no provenance for 51092" in problem for problem in script.problems(scan))
    monkeypatch.setitem(script.PROVENANCE, 51092, script.C("match expression"))
    scan.unresolved.append(("analysis/example:site", "computed_code", "computed code"))
    assert any("unresolved code at analysis/example:site" in problem for problem in script.problems(scan))
    assert row.sites  # the row came from a real raise site


def test_scan_follows_wrappers_and_conditionals() -> None:
    """Rows that only exist if the scan reads through `_fail(code, msg)`, `bad_value(msg)`, conditional codes,
    the tables' generated keys and the wire decoder's own exceptions."""
    rows = {(row.code, row.template_text) for row in _rows()}
    for expected in [
        (15959, "the match filter must be an expression in an object"),  # pipeline._fail
        (2, "$in needs an array"),  # match.bad_value
        (17081, "Missing 'then' parameter to $cond"),  # 17080 if name == "if" else 17081 if name == "then"
        (10774913, "The field 'max' is not allowed for text-based index but is present"),  # qe NOT_ALLOWED:*
        (22, "truncated BSON document"),  # str(exc) of the OP_MSG decoder's InvalidBSON
        (30050, "In an explain command the jsonSchema field must be top-level and not inside the command being "
                "explained."),  # CommandError(*INNER_RULES_REFUSED[...])
    ]:
        assert expected in rows, expected


class DocRow:
    def __init__(self, code: int, code_name: str, template_text: str) -> None:
        self.code = code
        self.code_name = code_name
        self.template_text = template_text
        pattern = re.sub(r"\\\{[A-Za-z_][\w ]*\\\}", "(.+)", re.escape(template_text))
        self.pattern = re.compile(pattern, re.DOTALL)


def _rows() -> list[DocRow]:
    """The rows of docs/compatibility.md's code tables."""
    rows: list[DocRow] = []
    for line in DOCUMENT.read_text(encoding="utf-8").splitlines():
        if not re.match(r"^\| \d+ \|", line):
            continue
        cells = [cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", line)[1:-1]]
        message = cells[2].removesuffix("†").removesuffix("‡").strip()
        fence = "``" if message.startswith("``") else "`"
        text = message.removeprefix(fence).removesuffix(fence)
        if text.startswith(" ") and text.endswith(" "):
            text = text[1:-1]
        rows.append(DocRow(int(cells[0]), cells[1], text))
    return rows


KEY = Binary(uuid.UUID("12345678-1234-5678-1234-567812345678").bytes, 4)
DETERMINISTIC = {"encrypt": {"keyId": [KEY], "algorithm": "AEAD_AES_256_CBC_HMAC_SHA_512-Deterministic",
                             "bsonType": "string"}}
SCHEMA = {"bsonType": "object", "properties": {"ssn": DETERMINISTIC}}
CSFLE = {"jsonSchema": SCHEMA, "isRemoteSchema": False}


def _qe(queries: dict[str, Any]) -> dict[str, Any]:
    return {"encryptionInformation": {"type": 1, "schema": {"db.people": {
        "escCollection": "enxcol_.people.esc", "ecocCollection": "enxcol_.people.ecoc",
        "fields": [{"path": "ssn", "keyId": KEY, "bsonType": "string", "queries": queries}]}}}}


# (area, command, code, exact errmsg): one row from each of several areas of the document.
CASES = [
    ("command parsing (IDL)", {"find": "people", "filter": {}, "bogus": 1, **CSFLE},
     40415, "BSON field 'find.bogus' is an unknown field."),
    ("CSFLE schema", {"find": "people", "filter": {}, "jsonSchema": {"required": ["a"]}, "isRemoteSchema": False},
     31068, "JSON schema keyword 'required' is only allowed with a remote schema"),
    ("QE encryptedFields", {"find": "people", "filter": {}, **_qe({"queryType": "equality", "sparsity": 2})},
     6775205, "The field 'sparsity' is not allowed for equality index but is present"),
    ("filter", {"find": "people", "filter": {"ssn": {"$regex": "^1"}}, **CSFLE},
     51092, "Invalid match expression operator on encrypted field 'ssn': { ssn: { $regex: \"^1\" } }"),
    ("aggregation stage", {"aggregate": "people", "pipeline": [{"$sort": {"ssn": 1}}], "cursor": {}, **CSFLE},
     51201, "Sorting on key 'ssn' is not allowed due to encryption."),
    ("aggregation expression", {"aggregate": "people", "pipeline": [{"$project": {"x": {"$add": ["$ssn", 1]}}}],
                                "cursor": {}, **CSFLE},
     31110, "Encrypted field 'ssn' is not allowed to be evaluated by an addition calculation"),
    ("update", {"update": "people", "updates": [{"q": {}, "u": {"$inc": {"ssn": 1}}}], **CSFLE},
     51150, "$inc and $mul not allowed on encrypted values"),
    ("markd only", {"find": "people", "filter": {}, "min": {"ssn": "1"}, **CSFLE},
     2, "Index bounds 'min' cannot refer to the encrypted field 'ssn' with automatic encryption"),
]


@pytest.mark.parametrize(("area", "command", "code", "errmsg"), CASES, ids=[case[0] for case in CASES])
def test_documented_rows_hold_against_markd(client: MongoClient[Any], area: str, command: dict[str, Any],
                                            code: int, errmsg: str) -> None:
    reply = raw_command(client, "db", command)
    assert (reply["ok"], reply["code"], reply["errmsg"]) == (0.0, code, errmsg)
    documented = [row for row in _rows() if row.code == code and row.pattern.fullmatch(errmsg)]
    assert documented, f"no row of docs/compatibility.md for {code} matches {errmsg!r}"
    assert reply["codeName"] in {row.code_name for row in documented}


def test_quoted_rows_print_types_under_redact_errors() -> None:
    """A † row quotes a value; with --redactErrors markd prints the value's type in its place, as documented."""
    row = next(row for row in _rows() if row.code == 51092 and "{expr}" in row.template_text)
    command = {"find": "people", "filter": {"ssn": {"$regex": "^secret"}}, **CSFLE}
    with MarkdProcess(args=["--redactErrors"]) as markd:
        reply = raw_command(markd.client(), "db", command)
    assert reply["errmsg"] == "Invalid match expression operator on encrypted field 'ssn': { ssn: { $regex: string } }"
    assert row.pattern.fullmatch(str(reply["errmsg"]))
