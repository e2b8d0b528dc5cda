"""Running wrk with bench/rotate.lua and reading its summary."""

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LUA_SCRIPT = Path(__file__).with_name("rotate.lua")
MARKER = "BENCH_JSON "


@dataclass(frozen=True)
class Request:
    """What every request of a case sends; the token changes from one request to the next."""

    method: str
    path: str
    body: str = ""
    graphql: bool = False


@dataclass(frozen=True)
class WrkResult:
    summary: dict[str, Any]
    output: str

    @property
    def seconds(self) -> float:
        return float(self.summary["duration_us"]) / 1e6

    @property
    def requests(self) -> int:
        return int(self.summary["requests"])

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def latency_ms(self, percentile: str) -> float:
        return float(self.summary["latency_us"]["percentiles"][percentile]) / 1000

    @property
    def failures(self) -> int:
        """Responses that are not successes, plus requests that never got one."""
        errors = self.summary["errors"]
        socket_errors = errors["connect"] + errors["read"] + errors["write"] + errors["timeout"]
        return int(self.summary["non2xx"] + self.summary["graphql_errors"] + socket_errors)


def ensure_wrk() -> str:
    """wrk's path; installs Debian's package when it is missing and we are root."""
    found = shutil.which("wrk")
    if found:
        return found
    print("wrk is not installed; installing Debian's package", file=sys.stderr)
    try:
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True, stdout=subprocess.DEVNULL)
    except (OSError, subprocess.CalledProcessError):
        subprocess.run(["apt-get", "update", "-qq"], check=False, stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True, stdout=subprocess.DEVNULL)
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("wrk is required: apt-get install wrk")
    return found


def run_wrk(
    base_url: str,
    request: Request,
    tokens_file: Path,
    *,
    connections: int,
    seconds: float,
    timeout_seconds: float,
    threads: int = 1,
) -> WrkResult:
    command = [
        "wrk",
        f"--threads={threads}",
        f"--connections={connections}",
        f"--duration={max(1, round(seconds))}s",
        f"--timeout={max(1, round(timeout_seconds))}s",
        "--latency",
        f"--script={LUA_SCRIPT}",
        base_url + request.path,
        "--",
        str(tokens_file),
        request.method,
        request.path,
        request.body,
        "1" if request.graphql else "0",
    ]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    output = completed.stdout + completed.stderr
    for line in completed.stdout.splitlines():
        if line.startswith(MARKER):
            return WrkResult(summary=json.loads(line.removeprefix(MARKER)), output=output)
    raise RuntimeError(f"wrk gave no summary (exit {completed.returncode}):\n{output}")
