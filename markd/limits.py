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


def check_bson_depth(document: Any, size: int | None = None) -> None:
    """Overflow (15) when `document` (decoded) nests more than MAX_BSON_DEPTH levels below its top."""
    if size is not None and size < MIN_BYTES_TOO_DEEP:
        return
    # (container, depth) pairs; the top-level document is depth 0, as in mongod's validator.
    pending: list[tuple[Any, int]] = [(document, 0)]
    while pending:
        value, depth = pending.pop()
        children = value.values() if isinstance(value, dict) else value
        for child in children:
            if isinstance(child, (dict, list)):
                if depth + 1 > MAX_BSON_DEPTH:
                    raise too_deep_error()
                if child:
                    pending.append((child, depth + 1))
            elif hasattr(child, "scope") and isinstance(child.scope, dict):  # code with scope
                if depth + 1 > MAX_BSON_DEPTH:
                    raise too_deep_error()
                pending.append((child.scope, depth + 1))


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
