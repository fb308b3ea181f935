"""Growth laws (issue 15): how markd's cost per command grows with what the command holds, in process.

Each law varies one thing and keeps the rest of a realistic command fixed; each point is the median
CPU time (this thread's) of `core.process_frame` on the same frame, the whole request path without
sockets: wire decode, analysis, reply encode. The slope (least squares) is the cost per unit:

- encrypted fields in an inserted document (deterministic strings), µs per field;
- document size (an unencrypted string grown), µs per KB;
- batch size (inserted documents like workload b's), µs per document;
- `$in` length (strings on a deterministic field), µs per value;
- pipeline length (aggregate stages: $match, $addFields, $project, $sort, $limit repeated), µs per stage;
- schema size, properties of the jsonSchema: a cache hit (the same schema every time) and a miss
  (a schema never seen: each command's differs in its title), µs per property.

    /work/venv/bin/python -m bench.growth           # prints the table; bench.run includes it in results.json
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import struct
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bson
from bson.binary import Binary

from bench import workloads

KEY = Binary(uuid.UUID(int=0x15).bytes, 4)
DETERMINISTIC = workloads.DETERMINISTIC
_HEADER = struct.Struct("<iiii")


def frame(body: dict[str, Any], documents: list[dict[str, Any]] | None = None) -> bytes:
    """An OP_MSG as pymongo frames a marking command: the body, documents as a kind-1 sequence."""
    sections = b"\x00" + bson.encode(body)
    if documents:
        payload = b"documents\x00" + b"".join(bson.encode(document) for document in documents)
        sections += b"\x01" + struct.pack("<i", 4 + len(payload)) + payload
    message = b"\x00\x00\x00\x00" + sections
    return _HEADER.pack(16 + len(message), 1, 0, 2013) + message


def schema(properties: int, title: str = "") -> dict[str, Any]:
    """A jsonSchema of `properties` deterministic string fields f0, f1, ... (and workload b's)."""
    base = workloads.csfle_json_schema()
    props = dict(base["properties"])
    props.update({f"f{i}": {"encrypt": {"bsonType": "string", "algorithm": DETERMINISTIC}} for i in range(properties)})
    return {**base, "properties": props, **({"title": title} if title else {})}


def csfle(body: dict[str, Any], json_schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {**body, "jsonSchema": json_schema or schema(40), "isRemoteSchema": False, "$db": workloads.DATABASE}


@dataclass
class Law:
    name: str
    unit: str
    points: list[tuple[float, float]] = field(default_factory=list)  # (size, µs per command)

    @property
    def slope(self) -> float:
        """µs per unit, least squares over the points."""
        xs, ys = [x for x, _ in self.points], [y for _, y in self.points]
        mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
        spread = sum((x - mean_x) ** 2 for x in xs)
        return sum((x - mean_x) * (y - mean_y) for x, y in self.points) / spread if spread else 0.0

    @property
    def intercept(self) -> float:
        xs, ys = [x for x, _ in self.points], [y for _, y in self.points]
        return statistics.fmean(ys) - self.slope * statistics.fmean(xs)


def _cost_us(frames: Callable[[], bytes], budget: float) -> float:
    """Median CPU µs of process_frame over batches; `frames()` gives the frame of each call."""
    from markd import core
    from markd.commands import ConnectionInfo, Dispatcher

    dispatcher = Dispatcher(argv=[], parsed_options={})
    connection = ConnectionInfo(1, "growth", True)
    for _ in range(2):
        outcome = core.process_frame(frames(), connection, dispatcher)
        reply = bson.decode(outcome.reply[21:]) if outcome.reply else {}
        if not reply.get("ok"):
            raise RuntimeError(f"growth workload refused: {reply}")
    started = time.thread_time_ns()
    core.process_frame(frames(), connection, dispatcher)
    batch = max(1, 3_000_000 // max(1, time.thread_time_ns() - started))
    samples: list[float] = []
    deadline = time.perf_counter() + budget
    while len(samples) < 5 or (time.perf_counter() < deadline and len(samples) < 200):
        prepared = [frames() for _ in range(batch)]
        started = time.thread_time_ns()
        for one in prepared:
            core.process_frame(one, connection, dispatcher)
        samples.append((time.thread_time_ns() - started) / 1000 / batch)
    return statistics.median(samples)


def _fixed(one: bytes) -> Callable[[], bytes]:
    return lambda: one


def _new_schema_each_time(body: dict[str, Any], properties: int) -> Callable[[], bytes]:
    titles = itertools.count()
    return lambda: frame(csfle(body, schema(properties, f"t{next(titles)}")))


def measure(budget: float = 0.4, quick: bool = False) -> list[Law]:
    laws: list[Law] = []
    person = workloads.person(1)

    fields = Law("encrypted fields per document", "field")
    for count in (0, 5, 10, 20, 40) if not quick else (0, 10, 40):
        document = {"_id": 1, **{f"f{i}": f"value {i:04d}" for i in range(count)}, "plain": "x" * 64}
        fields.points.append((count, _cost_us(_fixed(frame(csfle({"insert": "people", "ordered": True}),
                                                            [document])), budget)))
    laws.append(fields)

    size = Law("document size (b's document, padding grown)", "KB")
    for kilobytes in (1, 4, 16, 64) if not quick else (1, 16, 64):
        document = {**person, "padding": "x" * (kilobytes * 1024 - 550)}
        size.points.append((len(bson.encode(document)) / 1024, _cost_us(_fixed(frame(csfle(
            {"insert": "people", "ordered": True}), [document])), budget)))
    laws.append(size)

    batch = Law("batch size (b's documents)", "document")
    for count in (1, 10, 100, 1000) if not quick else (1, 100, 1000):
        documents = [workloads.person(i) for i in range(count)]
        batch.points.append((count, _cost_us(_fixed(frame(csfle({"insert": "people", "ordered": True}), documents)),
                                             budget)))
    laws.append(batch)

    in_list = Law("$in length (strings, deterministic field)", "value")
    for count in (1, 10, 100, 1000) if not quick else (1, 100, 1000):
        values = [f"{i:03d}-{i % 100:02d}-{i:04d}" for i in range(count)]
        in_list.points.append((count, _cost_us(_fixed(frame(csfle({"find": "people",
                                                                   "filter": {"ssn": {"$in": values}}}))), budget)))
    laws.append(in_list)

    stages = Law("pipeline length (aggregate stages)", "stage")
    cycle = [{"$match": {"ssn": "123-45-6789", "age": {"$gte": 21}}}, {"$addFields": {"region": "north"}},
             {"$project": {"name": 1, "ssn": 1, "city": 1, "region": 1, "age": 1}}, {"$sort": {"name": 1}},
             {"$limit": 50}]
    for count in (1, 5, 10, 20) if not quick else (1, 10, 20):
        pipeline = list(itertools.islice(itertools.cycle(cycle), count))
        stages.points.append((count, _cost_us(_fixed(frame(csfle({"aggregate": "people", "pipeline": pipeline,
                                                                  "cursor": {}}))), budget)))
    laws.append(stages)

    find = {"find": "people", "filter": {"ssn": "123-45-6789"}}
    hit = Law("schema size, cache hit (find, the same schema)", "property")
    miss = Law("schema size, cache miss (find, a new schema each time)", "property")
    for properties in (10, 100, 1000) if not quick else (10, 1000):
        hit.points.append((properties, _cost_us(_fixed(frame(csfle(find, schema(properties)))), budget)))
        miss.points.append((properties, _cost_us(_new_schema_each_time(find, properties), budget)))
    laws.extend([hit, miss])
    return laws


def summary(laws: list[Law]) -> dict[str, float]:
    by_name = {law.name.split(" (")[0].split(",")[0] + ("" if "cache" not in law.name else
                                                        (" hit" if "hit" in law.name else " miss")): law
               for law in laws}
    out = {
        "encrypted_field_us": by_name["encrypted fields per document"].slope,
        "document_kb_us": by_name["document size"].slope,
        "batch_document_us": by_name["batch size"].slope,
        "in_value_us": by_name["$in length"].slope,
        "pipeline_stage_us": by_name["pipeline length"].slope,
        "schema_hit_property_us": by_name["schema size hit"].slope,
        "schema_miss_property_us": by_name["schema size miss"].slope,
        "schema_hit_10_properties_us": by_name["schema size hit"].points[0][1],
        "schema_hit_1000_properties_us": by_name["schema size hit"].points[-1][1],
    }
    return {key: round(value, 3) for key, value in out.items()}


def format_laws(laws: list[Law]) -> str:
    lines = ["| law | points (size: µs per command) | slope | at zero |", "|---|---|---|---|"]
    for law in laws:
        points = ", ".join(f"{x:g}: {y:,.1f}" for x, y in law.points)
        lines.append(f"| {law.name} | {points} | {law.slope:,.3f} µs per {law.unit} | {law.intercept:,.1f} µs |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="markd's growth laws, in process")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--budget", type=float, default=0.4, help="seconds per point")
    args = parser.parse_args(argv)
    sys.setrecursionlimit(4000)
    laws = measure(args.budget, args.quick)
    print(format_laws(laws))
    print(summary(laws))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
