"""Hand-written marking commands for the row tables: a command plus the rules libmongocrypt attaches."""

from __future__ import annotations

from typing import Any

from tests.adversarial import rawbson, schemas
from tests.adversarial.rawbson import Doc
from tests.adversarial.schemas import COLL


def with_rules(command: dict[str, Any] | Doc, scheme: str = "csfle", *, namespaces: tuple[str, ...] = (COLL,),
               multi: bool = False, duplicate: str | None = None, db: str = "db", inside_explain: bool = False) -> Doc:
    """`command` as libmongocrypt sends it for `scheme`: rules attached (beside explain, or with `inside_explain`
    in the explained command as it sends them to the shared library; in bulkWrite's nsInfo)."""
    rules_scheme = schemas.SCHEMES[scheme]
    if rules_scheme.flavour == "csfle":
        rules = schemas.csfle_rules(rules_scheme, namespaces, multi=multi, duplicate=duplicate)
    else:
        rules = schemas.qe_rules(rules_scheme, namespaces, duplicate=duplicate)
    pairs = rawbson.pairs_of(command)
    name = pairs[0][0]
    if name == "explain" and inside_explain:
        inner = Doc([*rawbson.pairs_of(pairs[0][1]), *rules])
        return Doc([("explain", inner), *pairs[1:], ("$db", db)])
    if name == "bulkWrite" and rules_scheme.flavour == "qe":
        pairs = [(k, [Doc([("ns", schemas.ns(COLL)), *rules])] if k == "nsInfo" else v) for k, v in pairs]
        return Doc([*pairs, ("$db", "admin")])
    return Doc([*pairs, *rules, ("$db", "admin" if name == "bulkWrite" else db)])


def plain(value: Any) -> Any:
    """A Doc tree as dicts (for clients that take dicts; a repeated key keeps its last value)."""
    if isinstance(value, (Doc, dict)):
        return {key: plain(item) for key, item in rawbson.pairs_of(value)}
    if isinstance(value, list):
        return [plain(item) for item in value]
    return value
