"""Start markd and the floor as real processes on free ports in a private temporary directory."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
MARKD_DEFAULT_PORT = 27020


def free_port() -> int:
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port != MARKD_DEFAULT_PORT:
            return port


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def markd_executable() -> str:
    """The `markd` console script next to this interpreter, else `python -m markd.cli`."""
    script = Path(sys.executable).parent / "markd"
    return str(script) if script.exists() else ""


@dataclass
class ServerProcess:
    name: str
    command: list[str]
    port: int
    workdir: Path
    cpus: set[int] | None = None  # pin the process (all its threads) to these CPUs
    process: subprocess.Popen[bytes] | None = None
    started_at: float = field(default=0.0)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> ServerProcess:
        log = open(self.workdir / f"{self.name}.stderr", "wb")
        cpus = self.cpus

        def pin() -> None:
            if cpus:
                os.sched_setaffinity(0, cpus)

        self.process = subprocess.Popen(self.command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=log,
                                        preexec_fn=pin if cpus else None)
        log.close()
        wait_for_port(self.port, self.process)
        self.started_at = time.monotonic()
        return self

    def stop(self) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
        try:
            return self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def start_markd(workdir: Path, cpus: set[int] | None = None, extra_args: list[str] | None = None) -> ServerProcess:
    port = free_port()
    executable = markd_executable()
    command = [executable] if executable else [sys.executable, "-m", "markd.cli"]
    command += ["--port", str(port), "--pidfilepath", str(workdir / "markd.pid"),
                "--unixSocketPrefix", str(workdir), "--logpath", str(workdir / "markd.log"),
                "--idleShutdownTimeoutSecs", "0", *(extra_args or [])]
    return ServerProcess("markd", command, port, workdir, cpus).start()


def start_floor(workdir: Path, cpus: set[int] | None = None) -> ServerProcess:
    port = free_port()
    command = [sys.executable, "-m", "bench.floor", "--port", str(port)]
    return ServerProcess("floor", command, port, workdir, cpus).start()


def cpu_layout(pin: bool) -> tuple[set[int] | None, set[int] | None]:
    """(server CPUs, client CPUs): on 2+ CPUs the server gets the last one and the client the others.

    Pinned, every run has the same layout (otherwise the scheduler sometimes puts client and server on
    one CPU, which halves throughput and changes latency by 2-3x between runs).
    """
    available = sorted(os.sched_getaffinity(0))
    if not pin or len(available) < 2:
        return None, None
    return {available[-1]}, set(available[:-1])


def compile_markd() -> None:
    """Byte-compile markd as an installed package is (pip compiles on install): with PYTHONDONTWRITEBYTECODE
    set, every markd a benchmark starts would otherwise compile its modules from source (~50 ms at start-up)."""
    import compileall

    compileall.compile_dir(str(REPO_ROOT / "markd"), quiet=1)


def private_workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="markd-bench-"))


def remove_workdir(workdir: Path) -> None:
    shutil.rmtree(workdir, ignore_errors=True)
