"""Prototypes of proposed speed-ups to code outside bench/, measured against what markd does today.

    /work/venv/bin/python -m bench.candidates

markd's request path today decodes every request 2.5 times: `codec._parse_op_msg` decodes the body
and every kind-1 document to validate them, merges the sequences into new command bytes (copying a
1 MB batch three times), then `bsonvalues.decode` decodes the merged bytes again and re-encodes the
result to check it round-trips. `decode_op_msg_once` below does the same job in one pass: the body
with `bson.decode`, each kind-1 sequence with one `bson.decode_all` over the section's bytes (no
per-document slices, no merged copy), and the exact-type check per part. It returns the same dict
for every workload (checked below) and leaves error handling as it is: InvalidBSON in either decode
is still the caller's `{ok: 0, code: 22}`.

Nothing here is imported by markd: these are measurements for whoever owns the wire code.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bson
from bson.binary import Binary

from bench import servers, stages, workloads
from markd import bsonvalues
from markd.errors import CommandError
from markd.wire import codec

_INT32 = struct.Struct("<i")


def decode_exact(data: bytes | memoryview) -> dict[str, Any]:
    """bsonvalues.decode without the copy: C decode, round-trip check, Python walk only if it fails."""
    document = bson.decode(data, bsonvalues.CODEC_OPTIONS)
    if bson.encode(document, codec_options=bsonvalues.CODEC_OPTIONS) == data:
        return document
    return bsonvalues.decode(bytes(data))


def decode_all_exact(section: memoryview) -> list[dict[str, Any]]:
    """Every document of a kind-1 payload in one C call; the per-document walk only when one needs it."""
    documents: list[dict[str, Any]] = bson.decode_all(section, bsonvalues.CODEC_OPTIONS)
    encoded = b"".join(bson.encode(document, codec_options=bsonvalues.CODEC_OPTIONS) for document in documents)
    if encoded == section:
        return documents
    exact: list[dict[str, Any]] = []
    offset = 0
    raw = bytes(section)
    while offset < len(raw):
        size = _INT32.unpack_from(raw, offset)[0]
        exact.append(bsonvalues.decode(raw[offset : offset + size]))
        offset += size
    return exact


def decode_op_msg_once(frame: bytes) -> dict[str, Any]:
    """The command of an OP_MSG frame (body + kind-1 sequences merged), decoded exactly, in one pass.

    Structure checks (section kinds, lengths, duplicate names) as `codec._parse_op_msg` makes them;
    no checksum handling here (pymongo sends none): the prototype covers the common path only.
    """
    view = memoryview(frame)
    end = len(frame)
    offset = codec.HEADER_SIZE + 4
    command: dict[str, Any] | None = None
    sequences: list[tuple[str, list[dict[str, Any]]]] = []
    while offset < end:
        kind = frame[offset]
        offset += 1
        if kind == 0:
            size = codec._bson_size(frame, offset, end)
            command = decode_exact(view[offset : offset + size])
            offset += size
        elif kind == 1:
            size = _INT32.unpack_from(frame, offset)[0]
            name, position = codec._cstring(frame, offset + 4, offset + size)
            sequences.append((name, decode_all_exact(view[position : offset + size])))
            offset += size
        else:
            raise ValueError(f"Unknown section kind {kind}")
    if command is None:
        raise ValueError("OP_MSG does not contain a body")
    for name, documents in sequences:
        if "." in name or name in command:
            raise ValueError(f"Duplicate field {name} in OP_MSG document sequence and body")
        command[name] = documents
    return command


def frame_reader_one_copy(buffer: bytearray, data: bytes) -> list[bytes]:
    """FrameReader.feed with one copy per frame (memoryview slice) and no copy at all when `data` is
    exactly one whole frame and nothing was pending (the common case for small requests)."""
    if not buffer and len(data) >= codec.HEADER_SIZE and codec.read_header(data)[0] == len(data):
        return [data]
    buffer += data
    frames: list[bytes] = []
    start = 0
    end = len(buffer)
    view = memoryview(buffer)
    while end - start >= codec.HEADER_SIZE:
        length = codec.read_header(view[start : start + codec.HEADER_SIZE])[0]
        if end - start < length:
            break
        frames.append(bytes(view[start : start + length]))
        start += length
    view.release()
    if start:
        del buffer[:start]
    return frames


# -- CSFLE analysis (markd/analysis/csfle): prototypes applied as patches, for measurement only ----------


def patch_metadata_memo() -> Callable[[], None]:
    """EncryptionSchema.metadata_for answered from a per-schema dict: parsed schemas are cached, and
    the same field paths come back in every command, so `lookup` (split, walk from the root, join)
    runs once per (schema, path). Lookups that raise are not memoised (they raise again)."""
    from markd.analysis.csfle import schema as csfle_schema

    original = csfle_schema.EncryptionSchema.metadata_for
    memo: dict[tuple[int, str], Any] = {}

    def metadata_for(self: Any, path: str) -> Any:
        key = (id(self.root), path)
        found = memo.get(key)
        if found is None:
            found = csfle_schema.lookup(self.root, path)
            memo[key] = found
        return found

    csfle_schema.EncryptionSchema.metadata_for = metadata_for  # type: ignore[method-assign]

    def undo() -> None:
        csfle_schema.EncryptionSchema.metadata_for = original  # type: ignore[method-assign]

    return undo


def patch_placeholder_template() -> Callable[[], None]:
    """mark_value with the constant part of the placeholder (`a`, `ki`) encoded once per key: per value
    only `{v: value}` is encoded. Same bytes as `bsonvalues.encode({"a":..., "ki":..., "v": value})`."""
    from markd.analysis.csfle import expressions, match, placeholders, update, walk

    original = placeholders.mark_value
    prefixes: dict[tuple[int, Any], bytes] = {}

    def mark_value(metadata: Any, value: Any, path: str, context: Any) -> Any:
        if metadata.pointer:
            return original(metadata, value, path, context)
        placeholders.check_value(metadata, value, path, context)
        key = (metadata.algorithm, metadata.key)
        prefix = prefixes.get(key)
        if prefix is None:
            prefix = prefixes[key] = bsonvalues.encode({"a": metadata.algorithm, "ki": metadata.key})[4:-1]
        element = bsonvalues.encode({"v": value})[4:-1]
        body = _INT32.pack(len(prefix) + len(element) + 5) + prefix + element + b"\x00"
        return Binary(b"\x00" + body, 6)

    modules = (placeholders, walk, match, expressions, update)
    for module in modules:
        module.mark_value = mark_value  # type: ignore[attr-defined]

    def undo() -> None:
        for module in modules:
            module.mark_value = original  # type: ignore[attr-defined]

    return undo


def patch_compare_context_memo() -> Callable[[], None]:
    """match._compare_context without building a new frozen MarkContext for every value of an $in:
    the comparison context of a context is computed once (the fix in match._in_values is to hoist
    `_compare_context(context)` out of its loop)."""
    from markd.analysis.csfle import match

    original = match._compare_context
    last: list[Any] = [None, None]

    def compare_context(context: Any) -> Any:
        if last[0] is not context:
            last[0], last[1] = context, original(context)
        return last[1]

    match._compare_context = compare_context

    def undo() -> None:
        match._compare_context = original

    return undo


def patch_sorted_set_keys_once() -> Callable[[], None]:
    """ordering.sorted_set computing each value's order_key once (today: once in `sorted`, then twice
    more per value in the dedup loop), with `_rank` answered by exact type first (today an isinstance
    chain that reaches Binary after an ABC `Mapping` check)."""
    from markd.analysis.csfle import match, ordering

    original_sorted_set = ordering.sorted_set
    original_rank = ordering._rank
    from bson import Int64 as _Int64

    rank_by_type: dict[type, int] = {str: 15, int: 10, float: 10, _Int64: 10, Binary: 30, bool: 40,
                                     type(None): 5}

    def rank(value: Any) -> int:
        found = rank_by_type.get(type(value))
        return found if found is not None else original_rank(value)

    def sorted_set(values: Any) -> list[Any]:
        keyed = sorted(((ordering.order_key(value), value) for value in values), key=lambda pair: pair[0])
        result: list[Any] = []
        last_key: Any = None
        for key, value in keyed:
            if not result or key != last_key:
                result.append(value)
                last_key = key
        return result

    ordering._rank = rank
    ordering.sorted_set = sorted_set
    match.sorted_set = sorted_set  # type: ignore[attr-defined]

    def undo() -> None:
        ordering._rank = original_rank
        ordering.sorted_set = original_sorted_set
        match.sorted_set = original_sorted_set  # type: ignore[attr-defined]

    return undo


def dispatch_reply(frame: bytes, dispatcher: Any, connection: Any) -> bytes:
    message = codec.parse_message(frame)
    assert isinstance(message, codec.OpMsg)
    try:
        reply = dispatcher.handle(message.command, connection)
    except CommandError as exc:
        reply = exc.to_reply()
    return bsonvalues.encode(reply)


def analysis_candidates(chosen: list[workloads.Workload]) -> None:
    from markd.analysis.csfle import commands as csfle_commands
    from markd.analysis.csfle import schema as csfle_schema
    from markd.commands import ConnectionInfo, Dispatcher

    dispatcher = Dispatcher(argv=[], parsed_options={})
    connection = ConnectionInfo(1, "127.0.0.1:1", True)
    csfle = [w for w in chosen if w.key in ("b", "c", "d", "f")]
    patches = [("metadata memo", patch_metadata_memo), ("compare-context hoist", patch_compare_context_memo),
               ("sorted_set keys once", patch_sorted_set_keys_once)]
    if "--template" in sys.argv:  # measured: no gain (slower on b and c); kept to show it
        patches.append(("placeholder template", patch_placeholder_template))
    print("\nCSFLE analysis: dispatch+decode+encode µs per command (median), patches applied cumulatively")
    print("| wl | workload | today | " + " | ".join(f"+ {name}" for name, _ in patches) + " | same reply |")
    print("|---|---|---|" + "---|" * len(patches) + "---|")
    for workload in csfle:
        frame = workload.request
        baseline = dispatch_reply(frame, dispatcher, connection)
        cells = [stages.median_us(lambda frame=frame: dispatch_reply(frame, dispatcher, connection))]  # type: ignore[misc]
        undos = []
        same = True
        for _name, apply in patches:
            undos.append(apply())
            cells.append(stages.median_us(lambda frame=frame: dispatch_reply(frame, dispatcher, connection)))  # type: ignore[misc]
            same = same and dispatch_reply(frame, dispatcher, connection) == baseline
        for undo in reversed(undos):
            undo()
        print(f"| {workload.key} | {workload.name} | " + " | ".join(f"{cell:,.1f}" for cell in cells) + f" | {same} |")

    print("\nCSFLE analysis: costs that a patch cannot isolate, µs (median)")
    for workload in csfle:
        message = codec.parse_message(workload.request)
        assert isinstance(message, codec.OpMsg)
        command = message.command
        reply = bsonvalues.decode(dispatch_reply(workload.request, dispatcher, connection))
        walk_cost = stages.median_us(lambda reply=reply: csfle_commands.contains_placeholder(reply.get("result")))  # type: ignore[misc]
        schema_doc = command.get("jsonSchema")
        key_cost = stages.median_us(
            lambda schema_doc=schema_doc: bsonvalues.encode({"s": schema_doc, "r": False}))  # type: ignore[misc]
        print(f"  ({workload.key}) contains_placeholder(result) second walk: {walk_cost:,.1f}; "
              f"schema cache key encode (schema.parse): {key_cost:,.1f}")
    _ = csfle_schema


def today(frame: bytes) -> dict[str, Any]:
    message = codec.parse_message(frame)
    assert isinstance(message, codec.OpMsg) and message.error is None
    return message.command


def main() -> int:
    workdir = servers.private_workdir()
    markd = servers.start_markd(workdir)
    try:
        chosen = workloads.build_workloads(markd.port, lambda message: print(message, file=sys.stderr))
    finally:
        markd.stop()
        servers.remove_workdir(workdir)
    print("request decode: today (parse_message + bsonvalues.decode) vs one pass; µs per command (median)")
    print("| wl | workload | today | one pass | saved | same dict |")
    print("|---|---|---|---|---|---|")
    for workload in chosen:
        if workload.key == "g":
            continue
        frame = workload.request
        before = stages.median_us(lambda frame=frame: today(frame))  # type: ignore[misc]
        after = stages.median_us(lambda frame=frame: decode_op_msg_once(frame))  # type: ignore[misc]
        same = today(frame) == decode_op_msg_once(frame)
        print(f"| {workload.key} | {workload.name} | {before:,.1f} | {after:,.1f} | {before - after:,.1f} | {same} |")
    print("\nframe reading: FrameReader.feed vs one copy; µs per frame delivered whole (median)")
    print("| wl | workload | today | one copy |")
    print("|---|---|---|---|")
    for workload in chosen:
        if workload.key in ("a", "b", "f"):
            frame = workload.request
            before = stages.median_us(lambda frame=frame: codec.FrameReader().feed(frame))  # type: ignore[misc]
            after = stages.median_us(lambda frame=frame: frame_reader_one_copy(bytearray(), frame))  # type: ignore[misc]
            print(f"| {workload.key} | {workload.name} | {before:,.1f} | {after:,.1f} |")
    analysis_candidates(chosen)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
