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


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process (fields 14 and 15 of /proc/<pid>/stat), in seconds."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            text = stat.read()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    fields = text[text.rindex(")") + 2 :].split()  # the command name may hold spaces
    return (int(fields[11]) + int(fields[12])) / _TICKS_PER_SECOND


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent in user and system mode (not interrupts, not idle)."""
    with open("/proc/stat", encoding="ascii") as stat:
        fields = stat.readline().split()[1:]
    user, nice, system = (int(value) for value in fields[:3])
    return (user + nice + system) / _TICKS_PER_SECOND
