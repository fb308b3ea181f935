"""Atlas Search stages ($search, $searchMeta, $vectorSearch): which paths their queries touch.

mongot executes these queries against its own plaintext index, so a query naming an encrypted field
would send the queried value in the clear (mongocryptd passes them through unexamined). markd reads
the spec as a closed world: every key must be a search keyword it knows, every path it names must be
unencrypted, and a form whose paths cannot be known (a wildcard path, `queryString`) is refused as
soon as the collection encrypts anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from markd.analysis.context import Scope
from markd.analysis.expressions import is_document
from markd.analysis.schema import NOT_ENCRYPTED, lookup

# Keys whose value names document paths (a string, an array of strings, or {value, multi}/{wildcard}).
PATH_KEYS = frozenset({"path", "defaultPath"})
# Search keywords whose values name no document path (operators, options, operator arguments).
KEYWORDS = frozenset({
    # operators
    "autocomplete", "compound", "embeddedDocument", "equals", "exists", "facet", "geoShape", "geoWithin",
    "hasAncestor", "hasRoot", "in", "knnBeta", "moreLikeThis", "near", "phrase", "range", "regex", "span", "text",
    "vectorSearch", "wildcard",
    # stage options
    "index", "highlight", "count", "returnStoredSource", "scoreDetails", "sort", "tracking", "concurrent",
    "searchAfter", "searchBefore", "returnScope", "facets", "operator",
    # operator arguments
    "query", "tokenOrder", "fuzzy", "maxEdits", "prefixLength", "maxExpansions", "score", "boost", "constant",
    "embedded", "function", "value", "multi", "must", "mustNot", "should", "filter", "minimumShouldMatch", "origin",
    "pivot", "gt", "gte", "lt", "lte", "slop", "synonyms", "allowAnalyzedField", "geometry", "circle", "box",
    "relation", "type", "coordinates", "center", "radius", "bottomLeft", "topRight", "k", "vector", "queryVector",
    "numCandidates", "limit", "exact", "maxNumPassages", "maxCharsToExamine", "threshold", "lowerBound",
    "upperBound", "numBuckets", "boundaries", "default", "aggregate", "multiply", "add", "log", "log1p", "gauss",
    "scale", "offset", "decay", "undefined", "first", "positions", "end", "subOrder", "inOrder",
    "contains", "or", "order", "unit", "matchCriteria", "lowerBoundPercentile", "searchTerms",
})


def _paths(value: Any) -> list[str] | None:
    """The paths a `path` value names, or None when it names them by pattern (a wildcard)."""
    items = value if isinstance(value, list) else [value]
    found: list[str] = []
    for item in items:
        if isinstance(item, str):
            found.append(item)
        elif is_document(item) and "value" in item and isinstance(item["value"], str) and "wildcard" not in item:
            found.append(item["value"])
        else:
            return None
    if any("*" in path for path in found):
        return None
    return found


def _filter_paths(filter_: Any) -> list[str] | None:
    """The field paths an MQL filter ($vectorSearch's pre-filter) compares."""
    if not is_document(filter_):
        return None
    found: list[str] = []
    for key, value in filter_.items():
        if key in ("$and", "$or", "$nor"):
            if not isinstance(value, list):
                return None
            for item in value:
                inner = _filter_paths(item)
                if inner is None:
                    return None
                found += inner
        elif key.startswith("$"):
            return None
        else:
            found.append(key)
    return found


def _named(spec: Any, name: str, scope: Scope, found: list[str]) -> bool:
    """Collect the paths `spec` names into `found`; False when some part of it cannot be read."""
    if isinstance(spec, list):
        return all(_named(item, name, scope, found) for item in spec)
    if not is_document(spec):
        return True
    for key, value in spec.items():
        if key in PATH_KEYS:
            paths = _paths(value)
            if paths is None:
                return False
            found += paths
        elif key == "filter" and name == "$vectorSearch":
            paths = _filter_paths(value)
            if paths is None:
                return False
            found += paths
        elif key == "like":  # moreLikeThis: documents whose field names are paths
            for document in value if isinstance(value, list) else [value]:
                if not is_document(document):
                    return False
                found += list(document)
        elif key == "queryString":  # its query names fields in Lucene syntax
            return False
        elif key == "sort" and is_document(value):
            found += [path for path in value if not path.startswith("$")]
        elif key not in KEYWORDS:
            return False
        elif not _named(value, name, scope, found):
            return False
    return True


def check_search(name: str, spec: Mapping[str, Any], scope: Scope) -> None:
    current = scope.current
    if not current.may_hold_encryption:
        return
    if name == "$search" and spec.get("returnStoredSource"):
        scope.fail("stored_source")
    found: list[str] = []
    if not _named(spec, name, scope, found):
        scope.fail("search_opaque", stage=name)
    for path in found:
        if lookup(current, path) is not NOT_ENCRYPTED:
            scope.fail("search_encrypted", stage=name, path=path)
