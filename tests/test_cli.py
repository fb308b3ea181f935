"""The command line as drivers and operators use it: both flag forms, every option mongocryptd accepts
(and nothing else), a YAML config, --version, python -m markd, and a clean exit on SIGTERM."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from markd.cli import IGNORED_FLAGS
from tests.support.process import (
    MONGOCRYPTD,
    PATIENCE,
    MarkdProcess,
    RawConnection,
    free_port,
    poll_until,
    wait_for_port,
)


def _run(argv: list[str], **options: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=PATIENCE, **options)  # type: ignore[call-overload]


def test_version():
    result = subprocess.run([MONGOCRYPTD, "--version"], capture_output=True, text=True, timeout=PATIENCE)
    assert result.returncode == 0
    assert result.stdout.startswith("markd 0.")


def test_help_lists_the_mongocryptd_flags():
    result = subprocess.run([MONGOCRYPTD, "--help"], capture_output=True, text=True, timeout=PATIENCE)
    assert result.returncode == 0
    for flag in ("--port", "--bind_ip", "--bind_ip_all", "--ipv6", "--idleShutdownTimeoutSecs", "--pidfilepath",
                 "--unixSocketPrefix", "--nounixsocket", "--filePermissions", "--logpath", "--logappend", "--logRotate",
                 "--quiet", "--config",
                 "--version"):
        assert flag in result.stdout


def test_equals_and_space_forms_and_mongocryptds_other_flags_warn():
    # MarkdProcess passes --port=N (equals form) and --pidfilepath PATH (space form).
    ignored = ["--setParameter", "enableTestCommands=1", "--timeZoneInfo=/usr/share/zoneinfo", "--noobjcheck"]
    with MarkdProcess(args=["--idleShutdownTimeoutSecs", "600", *ignored]) as daemon:
        with daemon.client() as client:
            options = client.admin.command("getCmdLineOpts")
        parsed = options["parsed"]  # mongod's layout
        assert parsed["processManagement"] == {"idleShutdownTimeoutSecs": 600, "pidFilePath": str(daemon.pidfile)}
        assert parsed["net"]["port"] == daemon.port
        assert parsed["net"]["unixDomainSocket"] == {"pathPrefix": str(daemon.workdir)}
        assert parsed["systemLog"] == {"path": str(daemon.logfile), "logAppend": True, "verbosity": 1}
        assert options["argv"][1:] == daemon.command_line()[1:]
        log = daemon.wait_for_log("markd started")
        for flag in ("--setParameter", "--timeZoneInfo", "--noobjcheck"):
            assert f"ignoring an option of mongocryptd's that markd has no use for option={flag}" in log


def test_every_option_mongocryptd_has_is_accepted():
    """All of IGNORED_FLAGS at once (a value for those that take one): markd serves and names each in a warning."""
    args: list[str] = []
    for flag, takes_value in IGNORED_FLAGS.items():
        args += [flag, "1"] if takes_value else [flag]
    with MarkdProcess(args=args) as daemon:
        with RawConnection(daemon.port) as connection:
            assert connection.command({"ping": 1, "$db": "admin"})["ok"] == 1
        log = daemon.wait_for_log("markd started")
    warned = set(re.findall(r"that markd has no use for option=(\S+)", log))
    assert warned == set(IGNORED_FLAGS)


# What drivers append to the spawn command line (their mongocryptd_spawn_args and their own defaults).
DRIVER_SPAWN_ARGS = {
    "pymongo, libmongoc, Java, Go, Ruby": ["--idleShutdownTimeoutSecs=60"],
    "Node.js, C#": ["--idleShutdownTimeoutSecs", "60"],
    "spec prose tests": ["--pidfilepath=bypass-spawning-mongocryptd.pid", "--idleShutdownTimeoutSecs=60"],
    "logging to a file": ["--logpath=spawned.log", "--logappend", "--quiet", "--idleShutdownTimeoutSecs=60"],
    "verbose": ["-vvv", "--verbose", "--idleShutdownTimeoutSecs=60"],
}


@pytest.mark.parametrize("who", sorted(DRIVER_SPAWN_ARGS))
def test_driver_spawn_args_start_markd(who, tmp_path):
    port = free_port()
    argv = [MONGOCRYPTD, *DRIVER_SPAWN_ARGS[who], f"--port={port}", f"--unixSocketPrefix={tmp_path}"]
    process = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_port(port)
        with RawConnection(port) as connection:
            assert connection.command({"hello": 1, "$db": "admin"})["iscryptd"] is True
            opts = connection.command({"getCmdLineOpts": 1, "$db": "admin"})
        assert opts["parsed"]["processManagement"]["idleShutdownTimeoutSecs"] == 60
    finally:
        process.terminate()
        assert process.wait(PATIENCE) == 0, process.stderr.read().decode() if process.stderr else ""
        if process.stderr:
            process.stderr.close()


def test_mongosh_spawn_line_with_port_zero(tmp_path):
    """mongosh spawns `--idleShutdownTimeoutSecs 60 --pidfilepath P --port 0 --unixSocketPrefix D` and reads
    the port the system chose; markd's pid file names it."""
    pidfile = tmp_path / "mongocryptd.pid"
    argv = [MONGOCRYPTD, "--idleShutdownTimeoutSecs", "60", "--pidfilepath", str(pidfile), "--port", "0",
            "--unixSocketPrefix", str(tmp_path)]
    process = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        content = _wait_for_pidfile_content(pidfile)
        assert content["pid"] == process.pid and content["port"] > 0
        with RawConnection(int(content["port"])) as connection:
            assert connection.command({"ping": 1, "$db": "admin"})["ok"] == 1
    finally:
        process.terminate()
        assert process.wait(PATIENCE) == 0


def _wait_for_pidfile_content(path: Path) -> dict[str, object]:
    def content() -> dict[str, object] | None:
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, ValueError):  # not yet there, or locked but not yet written
            return None

    return poll_until(content, f"a pid file at {path}")


# Refused: one line naming the option, exit 2, nothing opened or bound ---------------------------------
@pytest.mark.parametrize("bad, named", [
    (["--prot", "1234"], "--prot"),
    (["-V"], "-V"),
    (["--someFutureFlag=3"], "--someFutureFlag"),
    (["--idleShutdownTimeoutSecs=60", "--bogus"], "--bogus"),
    (["--port", "twenty"], "--port"),
    (["serve"], "serve"),
    (["--fork"], "--fork"),
])
def test_anything_else_is_refused_before_anything_is_bound(bad, named, tmp_path):
    port = free_port()
    argv = [MONGOCRYPTD, f"--port={port}", "--pidfilepath", str(tmp_path / "m.pid"),
            "--unixSocketPrefix", str(tmp_path), "--logpath", str(tmp_path / "m.log"), *bad]
    result = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=PATIENCE)
    assert result.returncode == 2, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and named in lines[0] and lines[0].startswith("markd: "), result.stderr
    assert result.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "a refused command line must create nothing"


def test_a_typo_gets_a_hint_of_markds_own_option():
    result = subprocess.run([MONGOCRYPTD, "--prot", "1234"], capture_output=True, text=True, timeout=PATIENCE)
    assert result.returncode == 2
    assert result.stderr == "markd: unrecognised option '--prot' (did you mean --port?); try 'markd --help'\n"


def test_output_config_prints_the_options_and_exits(tmp_path):
    result = subprocess.run([MONGOCRYPTD, "--outputConfig", "--port", "27999", "--idleShutdownTimeoutSecs=60"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=PATIENCE)
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout) == {"net": {"port": 27999},
                                             "processManagement": {"idleShutdownTimeoutSecs": 60}}
    assert list(tmp_path.iterdir()) == []


def test_python_dash_m_markd_is_the_same_program(tmp_path):
    for args in (["--version"], ["--prot", "1"], ["--fork"]):
        script = subprocess.run([MONGOCRYPTD, *args], capture_output=True, text=True, timeout=PATIENCE)
        module = _run([sys.executable, "-m", "markd", *args])
        assert (module.returncode, module.stdout, module.stderr) == (script.returncode, script.stdout,
                                                                      script.stderr), args
    port = free_port()
    argv = [sys.executable, "-m", "markd", f"--port={port}", "--pidfilepath", str(tmp_path / "m.pid"),
            "--unixSocketPrefix", str(tmp_path), "--setParameter", "x=1"]
    process = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        with RawConnection(tmp_path / "mongocryptd.sock") as connection:
            assert connection.command({"hello": 1, "$db": "admin"})["iscryptd"] is True
            argv_seen = connection.command({"getCmdLineOpts": 1, "$db": "admin"})["argv"]
        assert argv_seen == ["mongocryptd", *argv[3:]]
        assert json.loads((tmp_path / "m.pid").read_text())["pid"] == process.pid
    finally:
        process.terminate()
        assert process.wait(PATIENCE) == 0


def test_config_file_yaml():
    with tempfile.TemporaryDirectory(prefix="markd-config-") as directory:
        root = Path(directory)
        port = free_port()
        config = root / "markd.yaml"
        config.write_text(
            "net:\n"
            f"  port: {port}\n"
            "  bindIp: 127.0.0.1\n"
            "  unixDomainSocket:\n"
            f"    pathPrefix: {root}\n"
            "processManagement:\n"
            f"  pidFilePath: {root / 'from-config.pid'}\n"
            "  timeZoneInfo: /usr/share/zoneinfo\n"
            "systemLog:\n"
            f"  path: {root / 'from-config.log'}\n"
            "  verbosity: 1\n"
            "  component:\n"
            "    network:\n"
            "      verbosity: 2\n"
            "setParameter:\n"
            "  enableTestCommands: 1\n"
        )
        process = subprocess.Popen([MONGOCRYPTD, "--config", str(config)], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        try:
            wait_for_port(port)
            pid = json.loads((root / "from-config.pid").read_text())
            assert pid == {"port": port, "domainSocket": str(root / "mongocryptd.sock"), "pid": process.pid}
            with RawConnection(root / "mongocryptd.sock") as connection:
                assert connection.command({"ping": 1, "$db": "admin"})["ok"] == 1
            log = (root / "from-config.log").read_text()
            for setting in ("processManagement.timeZoneInfo", "systemLog.component.network.verbosity",
                            "setParameter.enableTestCommands"):
                assert f"that markd has no use for setting={setting}" in log
            assert "command=ping" in log  # verbosity 1 from the file: per-command debug lines
        finally:
            process.terminate()
            assert process.wait(PATIENCE) == 0


@pytest.mark.parametrize("text, named", [
    ("storage:\n  dbPath: /data/db\n", "storage.dbPath"),  # mongod's, not mongocryptd's
    ("net:\n  prot: 27020\n", "net.prot"),
    ("processManagement:\n  fork: true\n", "does not fork"),
])
def test_config_file_settings_mongocryptd_lacks_are_refused(text, named, tmp_path):
    config = tmp_path / "markd.yaml"
    config.write_text(text)
    result = subprocess.run([MONGOCRYPTD, "--config", str(config), "--unixSocketPrefix", str(tmp_path)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=PATIENCE)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and named in lines[0], result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["markd.yaml"]


def test_flags_override_the_config_file():
    with tempfile.TemporaryDirectory(prefix="markd-config-") as directory:
        config = Path(directory) / "markd.yaml"
        config.write_text("net:\n  port: 1\nprocessManagement:\n  idleShutdownTimeoutSecs: 5\n")
        with MarkdProcess(args=["-f", str(config)]) as daemon:  # MarkdProcess's --port wins over net.port
            with daemon.client() as client:
                parsed = client.admin.command("getCmdLineOpts")["parsed"]
            assert parsed["net"]["port"] == daemon.port
            assert parsed["processManagement"]["idleShutdownTimeoutSecs"] == 5  # from the file
            assert parsed["config"] == str(config)


def test_bad_config_file_is_a_clear_error():
    with tempfile.TemporaryDirectory(prefix="markd-config-") as directory:
        config = Path(directory) / "markd.yaml"
        config.write_text("net:\n  port: [not, a, port]\n")
        result = _run([MONGOCRYPTD, "--config", str(config)])
        assert result.returncode == 2
        assert "Bad value for net.port" in result.stderr
        missing = subprocess.run([MONGOCRYPTD, "--config", str(Path(directory) / "absent.yaml")],
                                 capture_output=True, text=True, timeout=PATIENCE)
        assert missing.returncode != 0


def test_sigterm_exits_zero_and_removes_socket_and_pid_file():
    with MarkdProcess() as daemon:
        assert daemon.pidfile.exists() and daemon.socket_path.exists()
        with daemon.client() as client:
            client.admin.command("ping")
            daemon.process.send_signal(signal.SIGTERM)
            assert daemon.exit_code() == 0
        assert not daemon.pidfile.exists()
        assert not daemon.socket_path.exists()
        log = daemon.log_text()
        assert "shutting down reason=SIGTERM" in log and "markd stopped" in log


def test_sigint_exits_zero():
    with MarkdProcess() as daemon:
        daemon.process.send_signal(signal.SIGINT)
        assert daemon.exit_code() == 0
        assert not daemon.pidfile.exists()


def test_shutdown_command_from_localhost():
    with MarkdProcess() as daemon:
        with daemon.client() as client:
            try:
                client.admin.command("shutdown")
            except Exception:  # the connection may close before the reply is read, as with mongod
                pass
        assert daemon.exit_code() == 0


def test_nounixsocket():
    with MarkdProcess(args=["--nounixsocket"]) as daemon:
        assert not daemon.socket_path.exists()
        assert daemon.pidfile_content()["domainSocket"] == ""


def _ipv6_loopback_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


def test_ipv6_adds_the_ipv6_loopback():
    if not _ipv6_loopback_available():
        pytest.skip("no IPv6 loopback here")
    with MarkdProcess(args=["--ipv6"]) as daemon:
        for host in ("127.0.0.1", "::1"):
            with socket.create_connection((host, daemon.port), timeout=PATIENCE):
                pass
        assert "addresses=127.0.0.1,::1" in daemon.wait_for_log("markd started")
        assert "non-loopback" not in daemon.log_text()


def test_bind_ip_list():
    with MarkdProcess(args=["--bind_ip", "127.0.0.1,localhost"]) as daemon:
        assert "addresses=127.0.0.1,localhost" in daemon.wait_for_log("markd started")


# Unix socket permissions (mongod's --filePermissions) ---------------------------------------------
def _socket_mode(daemon: MarkdProcess) -> int:
    return stat.S_IMODE(os.stat(daemon.socket_path).st_mode)


def test_socket_is_0700_by_default_and_file_permissions_changes_it():
    with MarkdProcess() as daemon:
        assert _socket_mode(daemon) == 0o700
    with MarkdProcess(args=["--filePermissions", "0770"]) as daemon:
        assert _socket_mode(daemon) == 0o770
        with daemon.client() as client:
            parsed = client.admin.command("getCmdLineOpts")["parsed"]
        assert parsed["net"]["unixDomainSocket"]["filePermissions"] == 0o770
        with RawConnection(daemon.socket_path) as connection:
            assert connection.command({"ping": 1, "$db": "admin"})["ok"] == 1


def test_file_permissions_from_the_config_file_are_octal():
    with tempfile.TemporaryDirectory(prefix="markd-config-") as directory:
        for written, expected in (("0777", 0o777), ("770", 0o770), ('"0660"', 0o660)):
            config = Path(directory) / "markd.yaml"
            config.write_text(f"net:\n  unixDomainSocket:\n    filePermissions: {written}\n")
            with MarkdProcess(args=["--config", str(config)]) as daemon:
                assert _socket_mode(daemon) == expected, written


def test_bad_file_permissions_are_a_clear_error():
    for bad in ("0800", "rwx", "01777"):
        result = _run([MONGOCRYPTD, "--filePermissions", bad])
        assert result.returncode == 2, bad
        assert "filePermissions" in result.stderr, result.stderr
    with tempfile.TemporaryDirectory(prefix="markd-config-") as directory:
        config = Path(directory) / "markd.yaml"
        config.write_text("net:\n  unixDomainSocket:\n    filePermissions: 0x1ff\n")
        result = _run([MONGOCRYPTD, "--config", str(config)])
        assert result.returncode == 2
        assert "Bad value for net.unixDomainSocket.filePermissions" in result.stderr


def _connects_as_nobody(path: Path, extra_groups: list[int]) -> bool:
    """Whether an unprivileged process (uid/gid 65534, plus `extra_groups`) can connect to the socket."""
    code = ("import socket, sys\ns = socket.socket(socket.AF_UNIX)\n"
            "try:\n    s.connect(sys.argv[1])\nexcept PermissionError:\n    sys.exit(3)\nsys.exit(0)\n")
    for python in (sys.executable, "/usr/bin/python3"):  # the venv's may sit under a home nobody can enter
        try:
            result = subprocess.run([python, "-c", code, str(path)], user=65534, group=65534, cwd="/",
                                    extra_groups=extra_groups, capture_output=True, text=True, timeout=PATIENCE)
        except (PermissionError, FileNotFoundError):
            continue
        assert result.returncode in (0, 3), result.stderr
        return result.returncode == 0
    pytest.skip("no Python that uid 65534 may run")


def test_file_permissions_decide_which_users_can_connect():
    """What the mode is for: 0700 only the daemon's user, 0770 also its group, 0777 everyone."""
    if os.geteuid() != 0:
        pytest.skip("needs root to connect as another user")
    group = os.getegid()  # the socket's group: the daemon's
    for mode, other, member in (("0700", False, False), ("0770", False, True), ("0777", True, True)):
        daemon = MarkdProcess(args=["--filePermissions", mode])
        daemon.workdir.chmod(0o755)  # let the other user reach the socket's directory
        with daemon:
            assert _connects_as_nobody(daemon.socket_path, []) is other, mode
            assert _connects_as_nobody(daemon.socket_path, [group]) is member, mode


# systemd readiness (Type=notify) -------------------------------------------------------------------
def _notify_listener(address: str) -> socket.socket:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind("\0" + address[1:] if address.startswith("@") else address)
    listener.settimeout(PATIENCE)
    return listener


def _notifications(listener: socket.socket) -> dict[str, str]:
    datagram = listener.recv(4096).decode()
    return dict(line.split("=", 1) for line in datagram.splitlines())


@pytest.mark.parametrize("kind", ["abstract", "path"])
def test_notify_socket_gets_ready_once_listening_and_stopping_at_shutdown(kind, monkeypatch):
    daemon = MarkdProcess(wait=False)
    address = (f"@markd-test-notify-{os.getpid()}-{daemon.port}" if kind == "abstract"
               else str(daemon.workdir / "notify.sock"))
    with _notify_listener(address) as listener:
        monkeypatch.setenv("NOTIFY_SOCKET", address)
        try:
            daemon.start()
            ready = _notifications(listener)
            assert ready["READY"] == "1"
            assert ready["MAINPID"] == str(daemon.process.pid)
            # READY means serving: no retry loop, the first connection attempts must succeed.
            with socket.create_connection(("127.0.0.1", daemon.port), timeout=PATIENCE):
                pass
            with RawConnection(daemon.socket_path) as connection:
                assert connection.command({"ping": 1, "$db": "admin"})["ok"] == 1
            assert daemon.pidfile_content()["pid"] == daemon.process.pid
            daemon.process.send_signal(signal.SIGTERM)
            assert _notifications(listener)["STOPPING"] == "1"
            assert daemon.exit_code() == 0
        finally:
            daemon.cleanup()


def test_unreachable_notify_socket_is_only_a_warning(monkeypatch):
    with tempfile.TemporaryDirectory(prefix="markd-notify-") as directory:
        monkeypatch.setenv("NOTIFY_SOCKET", str(Path(directory) / "nobody-listens.sock"))
        with MarkdProcess() as daemon:
            daemon.wait_for_log("cannot notify systemd")
            with daemon.client() as client:
                assert client.admin.command("ping")["ok"] == 1


# log files and signals -----------------------------------------------------------------------------
def test_sighup_reopens_the_log_file_and_does_not_stop_markd():
    with MarkdProcess() as daemon:
        daemon.wait_for_log("markd started")
        moved = daemon.workdir / "markd.log.1"
        daemon.logfile.rename(moved)  # as logrotate does
        daemon.process.send_signal(signal.SIGHUP)
        daemon.wait_for_log("log file reopened")
        assert daemon.process.poll() is None
        with daemon.client() as client:
            assert client.admin.command("ping")["ok"] == 1
        daemon.wait_for_log("command=ping")
        daemon.process.send_signal(signal.SIGHUP)  # again, with the file in place: appended, not truncated
        daemon.wait_for_log("signal=SIGHUP")
        assert daemon.stop() == 0
        old, new = moved.read_text(), daemon.log_text()
    assert "markd started" in old and "command=ping" not in old
    assert new.count("log file reopened") == 2 and "command=ping" in new and "markd stopped" in new


def test_sigusr1_rotates_the_log_as_mongod():
    with MarkdProcess() as daemon:
        daemon.wait_for_log("markd started")
        daemon.process.send_signal(signal.SIGUSR1)
        daemon.wait_for_log("log rotated")
        (renamed,) = daemon.workdir.glob("markd.log.20*")  # markd.log.<UTC time>
        assert daemon.process.poll() is None
        with daemon.client() as client:
            client.admin.command("ping")
        assert daemon.stop() == 0
        old, new = renamed.read_text(), daemon.log_text()
    assert "markd started" in old and "log rotation initiated" in old and "command=ping" not in old
    assert f"renamedTo={renamed}" in new and "command=ping" in new and "markd started" not in new


def test_log_rotate_reopen_leaves_the_file_to_logrotate():
    with MarkdProcess(args=["--logRotate", "reopen"]) as daemon:
        daemon.wait_for_log("markd started")
        daemon.process.send_signal(signal.SIGUSR1)
        log = daemon.wait_for_log("log file reopened")
        assert "signal=SIGUSR1" in log and "markd started" in log
        assert not list(daemon.workdir.glob("markd.log.*"))
        assert daemon.stop() == 0


def test_sighup_when_logging_to_stdout():
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="markd-stdout-") as directory:
        process = subprocess.Popen([MONGOCRYPTD, f"--port={port}", "--pidfilepath", f"{directory}/m.pid",
                                    "--unixSocketPrefix", directory], stdout=subprocess.PIPE, text=True)
        try:
            wait_for_port(port)
            process.send_signal(signal.SIGHUP)
            with RawConnection(port) as connection:
                assert connection.command({"ping": 1, "$db": "admin"})["ok"] == 1
            assert process.poll() is None
            process.terminate()
            out, _ = process.communicate(timeout=PATIENCE)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        assert process.returncode == 0
        assert "no log file to reopen" in out
