"""What the kernel says about processes and the machine: CPU time, memory, load (Linux /proc)."""

import os
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def load_average() -> tuple[float, float, float]:
    one, five, fifteen = Path("/proc/loadavg").read_text().split()[:3]
    return float(one), float(five), float(fifteen)


def cpu_times(pid: int) -> tuple[float, float]:
    """User and system (kernel) CPU time of one process; zeros once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0, 0.0
    return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS  # utime, stime


def cpu_seconds(pid: int) -> float:
    return sum(cpu_times(pid))


def memory_mb(pid: int) -> dict[str, float]:
    """Resident set size now and at its peak (VmRSS, VmHWM), in MiB."""
    values: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values["rss_mb" if name == "VmRSS" else "peak_rss_mb"] = int(rest.split()[0]) / 1024
    return values


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if parent == pid:
            found.append(int(entry.name))
    return found


def command_line(pid: int) -> str:
    try:
        return (Path(f"/proc/{pid}/cmdline").read_bytes()).replace(b"\0", b" ").decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return ""


def uvicorn_workers(pid: int) -> list[int]:
    """The processes that serve requests: the server itself, or its spawned workers with --workers N>1."""
    spawned = [child for child in children(pid) if "spawn_main" in command_line(child)]
    return spawned or [pid]


@dataclass(frozen=True)
class MachineCpu:
    busy: float  # seconds of CPU time used by everything on the machine
    total: float  # seconds of CPU time available (busy + idle)


def machine_cpu() -> MachineCpu:
    fields = [int(value) for value in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user
    return MachineCpu(busy=(total - idle) / CLOCK_TICKS, total=total / CLOCK_TICKS)
