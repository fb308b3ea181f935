"""What /proc says about a process: resident memory and CPU time."""

from __future__ import annotations

import os

_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


def _status_field(pid: int, name: str) -> int:
    """A `kB` line of /proc/<pid>/status (VmRSS, VmHWM...), in KB; 0 when the process is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(name + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return 0
    return 0


def rss_kb(pid: int) -> int:
    return _status_field(pid, "VmRSS")


def peak_rss_kb(pid: int) -> int:
    return _status_field(pid, "VmHWM")


def _stat_fields(pid: int) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name (field 3 onwards); [] when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            text = stat.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return []
    return text[text.rindex(")") + 2 :].split()  # the command name may hold spaces


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process (fields 14 and 15 of /proc/<pid>/stat), in seconds."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / _TICKS_PER_SECOND if fields else 0.0


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (markd's workers and analysis processes), from /proc/*/stat's ppid
    (this kernel has no /proc/<pid>/task/<tid>/children)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields:
                parents.setdefault(int(fields[1]), []).append(int(entry))
    found: list[int] = []
    pending = [pid]
    while pending:
        children = parents.get(pending.pop(), [])
        found += children
        pending += children
    return found


def tree_cpu_seconds(pid: int) -> float:
    """CPU of `pid` and everything below it: its own, its reaped children's (cutime, cstime) and its live
    descendants'."""
    fields = _stat_fields(pid)
    if not fields:
        return 0.0
    own = sum(int(value) for value in fields[11:15]) / _TICKS_PER_SECOND
    return own + sum(cpu_seconds(child) for child in descendants(pid))


def tree_rss_kb(pid: int) -> int:
    """RSS of `pid` and its live descendants (shared pages of forked workers count once per process)."""
    return rss_kb(pid) + sum(rss_kb(child) for child in descendants(pid))


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent in user and system mode (not interrupts, not idle)."""
    with open("/proc/stat", encoding="ascii") as stat:
        fields = stat.readline().split()[1:]
    user, nice, system = (int(value) for value in fields[:3])
    return (user + nice + system) / _TICKS_PER_SECOND
