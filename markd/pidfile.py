"""The pid file: JSON {port, domainSocket, pid} under an exclusive lock.

The lock is what collapses many concurrent spawns to one daemon: the first process to take it
keeps running, the others see it held and exit.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os


class PidFileLocked(Exception):
    """Another live process holds the lock."""


class PidFile:
    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self._fd: int | None = None

    def acquire(self) -> None:
        """Open and lock; PidFileLocked if another process holds it, OSError if it cannot be opened."""
        if self._fd is not None:
            return
        # Owner-only from creation (the umask can only narrow it); an existing file is narrowed too.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(fd)
            raise PidFileLocked(self.path) from exc
        except OSError:
            os.close(fd)
            raise
        with contextlib.suppress(OSError):
            os.fchmod(fd, 0o600)
        self._fd = fd

    def write(self, port: int, domain_socket: str | None) -> None:
        assert self._fd is not None
        content = json.dumps({"port": port, "domainSocket": domain_socket or "", "pid": os.getpid()})
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, (content + "\n").encode(), 0)
        os.fsync(self._fd)

    def detach(self) -> None:
        """Close this process's descriptor without touching the file or the lock (a forked worker: the lock
        is released when the supervisor, its holder, lets go)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.unlink(self.path)
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None


def release_endpoint(socket_path: str | None, pidfile: PidFile | None) -> None:
    """What a stopping markd (a single process or a worker group's supervisor) gives back, last."""
    if socket_path:
        with contextlib.suppress(OSError):
            os.unlink(socket_path)
    if pidfile is not None:
        pidfile.release()
