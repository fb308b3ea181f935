"""Counters and a marking-latency histogram, as an admin command reply and as Prometheus text.

Pure bookkeeping: the server calls in, and serves the text over HTTP itself.
"""

from __future__ import annotations

import bisect
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import markd
from markd.analysis import cache_stats

# Upper bounds of the marking-latency histogram buckets, in seconds.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class Metrics:
    def __init__(self) -> None:
        self.started = time.time()
        self.commands: Counter[tuple[str, str]] = Counter()
        self.latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        self.open_connections = 0
        self.total_connections = 0
        self.protocol_errors = 0
        # The server's resource figures (in-flight bytes, connection limit, analysis processes).
        self.extra: Callable[[], dict[str, Any]] | None = None

    def command_done(self, name: str, outcome: str, seconds: float = 0.0, marking: bool = False) -> None:
        """Count one command; only marking commands feed the latency histogram (handshakes would drown it)."""
        self.commands[(name, outcome)] += 1
        if marking:
            self.latency_counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
            self.latency_sum += seconds

    def connection_opened(self) -> None:
        self.open_connections += 1
        self.total_connections += 1

    def connection_closed(self) -> None:
        self.open_connections -= 1

    def protocol_error(self) -> None:
        self.protocol_errors += 1

    def snapshot(self) -> dict[str, Any]:
        hits, misses = cache_stats()
        return {
            "version": markd.__version__,
            "uptimeSecs": time.time() - self.started,
            "connections": {"current": self.open_connections, "totalCreated": self.total_connections},
            "protocolErrors": self.protocol_errors,
            "commands": [
                {"command": name, "outcome": outcome, "count": count}
                for (name, outcome), count in sorted(self.commands.items())
            ],
            "latency": {  # marking commands only
                "bucketsSecs": list(LATENCY_BUCKETS),
                "counts": list(self.latency_counts),
                "sumSecs": self.latency_sum,
            },
            "schemaCache": {"hits": hits, "misses": misses},
            **(self.extra() if self.extra is not None else {}),
        }

    def command_reply(self, _command: dict[str, Any]) -> dict[str, Any]:
        return {**self.snapshot(), "ok": 1.0}

    def prometheus_text(self, snapshot: dict[str, Any] | None = None) -> str:
        """Prometheus text of `snapshot` (a worker group's sum), or of this process's own figures."""
        snap = self.snapshot() if snapshot is None else snapshot
        lines = [
            "# HELP markd_commands_total Commands handled, by command name and outcome.",
            "# TYPE markd_commands_total counter",
        ]
        for row in snap["commands"]:
            name = _label(row["command"])
            outcome = _label(row["outcome"])
            lines.append(f'markd_commands_total{{command="{name}",outcome="{outcome}"}} {row["count"]}')
        lines += [
            "# HELP markd_marking_duration_seconds Time to analyze one marking command.",
            "# TYPE markd_marking_duration_seconds histogram",
        ]
        cumulative = 0
        for bound, count in zip((*LATENCY_BUCKETS, float("inf")), snap["latency"]["counts"], strict=True):
            cumulative += count
            le = "+Inf" if bound == float("inf") else repr(bound)
            lines.append(f'markd_marking_duration_seconds_bucket{{le="{le}"}} {cumulative}')
        lines += [
            f"markd_marking_duration_seconds_sum {snap['latency']['sumSecs']}",
            f"markd_marking_duration_seconds_count {cumulative}",
            "# HELP markd_open_connections Client connections open now.",
            "# TYPE markd_open_connections gauge",
            f"markd_open_connections {snap['connections']['current']}",
            "# HELP markd_connections_total Client connections accepted.",
            "# TYPE markd_connections_total counter",
            f"markd_connections_total {snap['connections']['totalCreated']}",
            "# HELP markd_protocol_errors_total Connections closed for a bad message.",
            "# TYPE markd_protocol_errors_total counter",
            f"markd_protocol_errors_total {snap['protocolErrors']}",
            "# HELP markd_schema_cache_hits_total Schema parses answered from the cache.",
            "# TYPE markd_schema_cache_hits_total counter",
            f"markd_schema_cache_hits_total {snap['schemaCache']['hits']}",
            "# HELP markd_schema_cache_misses_total Schemas parsed.",
            "# TYPE markd_schema_cache_misses_total counter",
            f"markd_schema_cache_misses_total {snap['schemaCache']['misses']}",
        ]
        if "inFlight" in snap:
            lines += [
                "# HELP markd_in_flight_bytes Bytes of requests and replies held now.",
                "# TYPE markd_in_flight_bytes gauge",
                f"markd_in_flight_bytes {snap['inFlight']['bytes']}",
                "# HELP markd_connections_evicted_total Idle connections closed to admit new ones at maxConns.",
                "# TYPE markd_connections_evicted_total counter",
                f"markd_connections_evicted_total {snap['connectionLimit']['evicted']}",
                "# HELP markd_connections_refused_total Connections refused at maxConns (none idle to close).",
                "# TYPE markd_connections_refused_total counter",
                f"markd_connections_refused_total {snap['connectionLimit']['refused']}",
                "# HELP markd_offloaded_requests_total Requests answered by an analysis process.",
                "# TYPE markd_offloaded_requests_total counter",
                f"markd_offloaded_requests_total {snap['analysisProcesses']['requests']}",
            ]
        return "\n".join(lines) + "\n"


def summed(snapshots: list[dict[str, Any]]) -> dict[str, Any]:
    """One snapshot for a group of worker processes: counts added (commands by name and outcome, latency
    buckets, connections, caches, budgets); the version and the longest uptime kept."""
    if not snapshots:
        return {}
    total: dict[str, Any] = {}
    commands: Counter[tuple[str, str]] = Counter()
    for snapshot in snapshots:
        for row in snapshot.get("commands", []):
            commands[(row["command"], row["outcome"])] += row["count"]
        _add(total, {key: value for key, value in snapshot.items() if key != "commands"})
    total["version"] = snapshots[0].get("version")
    total["uptimeSecs"] = max(snapshot.get("uptimeSecs", 0.0) for snapshot in snapshots)
    if "latency" in total:
        total["latency"]["bucketsSecs"] = list(LATENCY_BUCKETS)
    total["commands"] = [{"command": name, "outcome": outcome, "count": count}
                         for (name, outcome), count in sorted(commands.items())]
    return total


def _add(total: dict[str, Any], part: dict[str, Any]) -> None:
    for key, value in part.items():
        if isinstance(value, dict):
            _add(total.setdefault(key, {}), value)
        elif isinstance(value, list):
            previous = total.get(key)
            total[key] = ([a + b for a, b in zip(previous, value, strict=True)]
                          if isinstance(previous, list) and len(previous) == len(value) else list(value))
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            total.setdefault(key, value)
        else:
            total[key] = total.get(key, 0) + value


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")
