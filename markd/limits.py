"""mongod's nesting limits, enforced before any analysis sees a command.

- BSON depth: mongod validates every document it reads and refuses one nested more than
  `BSONDepth::kDefaultMaxAllowableDepth` (200) levels below its top level with `Overflow` (15),
  "BSONObj exceeded maximum nested object depth: 200" (a reply, not a closed connection).
- Sub-pipelines: `$lookup` and `$unionWith` pipelines nest at most `internalMaxSubPipelineViewDepth`
  (20) deep, else `MaxSubPipelineDepthExceeded` (232), "Maximum number of nested sub-pipelines
  exceeded. Limit is 20".

Both checks walk iteratively, so no input can make them recurse; within these bounds the analysis's
own recursion stays far below the interpreter's limit (the server also raises that limit, see
`RECURSION_LIMIT`).
"""

from __future__ import annotations

from typing import Any

from markd.errors import CommandError

MAX_BSON_DEPTH = 200
MAX_SUB_PIPELINE_DEPTH = 20
# Python frames the analysis may use: ~4 per BSON level at worst today, so 200 levels need ~800.
RECURSION_LIMIT = 4000
# The smallest BSON document nested d levels deep is 5 + 7 * (d - 1) bytes (type byte, empty key,
# an empty document per level): anything shorter cannot be too deep, and is not walked.
MIN_BYTES_TOO_DEEP = 5 + 7 * (MAX_BSON_DEPTH + 1)


def too_deep_error() -> CommandError:
    return CommandError(15, f"BSONObj exceeded maximum nested object depth: {MAX_BSON_DEPTH}", "Overflow")


def check_bson_depth(document: Any, size: int | None = None, level: int = 0) -> None:
    """Overflow (15) when `document` (decoded, itself `level` levels below the top) nests more than
    MAX_BSON_DEPTH levels below the top."""
    if size is not None and size < MIN_BYTES_TOO_DEEP:
        return
    if exceeds_depth(document, level):
        raise too_deep_error()


def exceeds_depth(document: Any, level: int = 0) -> bool:
    """Whether `document` (itself `level` levels below the top) holds something deeper than MAX_BSON_DEPTH."""
    return level + nesting(document, MAX_BSON_DEPTH - level) > MAX_BSON_DEPTH


def could_be_too_deep(data: bytes, start: int, end: int) -> bool:
    """False when the BSON in data[start:end] cannot nest beyond MAX_BSON_DEPTH: each level needs an element
    of type document, array or code-with-scope, i.e. one of those type bytes somewhere in it."""
    if end - start < MIN_BYTES_TOO_DEEP:
        return False
    containers = data.count(b"\x03", start, end) + data.count(b"\x04", start, end) + data.count(b"\x0f", start, end)
    return containers > MAX_BSON_DEPTH


def nesting(document: Any, limit: int = MAX_BSON_DEPTH) -> int:
    """How many levels of documents, arrays and scopes lie below `document` (0 for one holding none),
    counted up to `limit` + 1 at most (enough to tell that a limit is exceeded)."""
    deepest = 0
    # (container, depth) pairs; `document` itself is depth 0, as the top of mongod's validator.
    pending: list[tuple[Any, int]] = [(document, 0)]
    while pending:
        value, depth = pending.pop()
        children = value.values() if isinstance(value, dict) else value
        for child in children:
            if isinstance(child, (dict, list)):
                inner = child
            elif hasattr(child, "scope") and isinstance(child.scope, dict):  # code with scope
                inner = child.scope
            else:
                continue
            if depth + 1 > deepest:
                deepest = depth + 1
                if deepest > limit:
                    return deepest
            if inner:
                pending.append((inner, depth + 1))
    return deepest


def check_sub_pipelines(command: dict[str, Any]) -> None:
    """MaxSubPipelineDepthExceeded (232) when `$lookup`/`$unionWith` pipelines nest beyond mongod's limit."""
    name = next(iter(command), "")
    target = command
    if name == "explain" and isinstance(command.get("explain"), dict):
        target = command["explain"]
    pipeline = target.get("pipeline")
    if not isinstance(pipeline, list):
        return
    pending: list[tuple[list[Any], int]] = [(pipeline, 0)]
    while pending:
        stages, depth = pending.pop()
        for stage in stages:
            if not isinstance(stage, dict):
                continue
            for stage_name, spec in stage.items():
                if stage_name in ("$lookup", "$unionWith") and isinstance(spec, dict):
                    inner = spec.get("pipeline")
                    if isinstance(inner, list):
                        if depth >= MAX_SUB_PIPELINE_DEPTH:
                            raise CommandError(
                                232, "Maximum number of nested sub-pipelines exceeded. Limit is "
                                f"{MAX_SUB_PIPELINE_DEPTH}", "MaxSubPipelineDepthExceeded")
                        pending.append((inner, depth + 1))
                elif stage_name == "$facet" and isinstance(spec, dict):
                    # $facet's pipelines run in the same context: same depth.
                    pending.extend((inner, depth) for inner in spec.values() if isinstance(inner, list))
