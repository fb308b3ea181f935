"""Start real markd processes for tests: a free port, a private pid file and socket directory."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import bson
from pymongo import MongoClient

# The console script next to this interpreter (the venv's bin/), as drivers find it on PATH.
BIN_DIR = Path(sys.executable).parent
MONGOCRYPTD = str(BIN_DIR / "mongocryptd")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 15.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


@dataclass
class MarkdProcess:
    """A markd started with `mongocryptd` from the venv; stop() or use as a context manager."""

    args: list[str] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="markd-test-")))
    process: subprocess.Popen[bytes] | None = None
    wait: bool = True

    @property
    def pidfile(self) -> Path:
        return self.workdir / "mongocryptd.pid"

    @property
    def socket_path(self) -> Path:
        return self.workdir / "mongocryptd.sock"

    @property
    def logfile(self) -> Path:
        return self.workdir / "markd.log"

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}"

    def command_line(self) -> list[str]:
        line = [MONGOCRYPTD, f"--port={self.port}", "--pidfilepath", str(self.pidfile),
                "--unixSocketPrefix", str(self.workdir)]
        if not any(a.startswith("--logpath") for a in self.args):
            line += ["--logpath", str(self.logfile), "--logappend", "-v"]
        return line + self.args

    def start(self) -> MarkdProcess:
        self.process = subprocess.Popen(self.command_line(), cwd=self.workdir,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if self.wait:
            wait_for_port(self.port)
        return self

    def client(self, **kwargs: object) -> MongoClient[dict[str, object]]:
        return MongoClient(self.uri, serverSelectionTimeoutMS=5000, **kwargs)

    def log_text(self) -> str:
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        if self.process.stderr is not None:
            self.process.stderr.close()
        return code

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> MarkdProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


def raw_command(client: MongoClient[dict[str, object]], database: str, command: dict[str, object]) -> dict[str, object]:
    """Send a command and return the reply decoded with markd's exact-type decoder (ok: 0 included)."""
    from bson.raw_bson import RawBSONDocument

    from markd import bsonvalues

    encoded = bsonvalues.encode(command)
    # As pymongo's _EncryptionIO does: the top level as a dict, nested documents left raw.
    top_level = dict(RawBSONDocument(encoded).items())
    reply = client[database].command(top_level, check=False,
                                     codec_options=bson.codec_options.CodecOptions(document_class=RawBSONDocument))
    return bsonvalues.decode(reply.raw)


