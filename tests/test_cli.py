"""The command line as drivers and operators use it: both flag forms, unknown flags, a YAML config,
--version, and a clean exit on SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import tempfile
from pathlib import Path

from tests.support.process import MONGOCRYPTD, MarkdProcess, RawConnection, free_port, wait_for_port


def test_version():
    result = subprocess.run([MONGOCRYPTD, "--version"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    assert result.stdout.startswith("markd 0.")


def test_help_lists_the_mongocryptd_flags():
    result = subprocess.run([MONGOCRYPTD, "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    for flag in ("--port", "--bind_ip", "--bind_ip_all", "--ipv6", "--idleShutdownTimeoutSecs", "--pidfilepath",
                 "--unixSocketPrefix", "--nounixsocket", "--logpath", "--logappend", "--quiet", "--config",
                 "--version"):
        assert flag in result.stdout


def test_equals_and_space_forms_and_unknown_flags_warn():
    # MarkdProcess passes --port=N (equals form) and --pidfilepath PATH (space form).
    unknown = ["--setParameter", "enableTestCommands=1", "--someFutureFlag=3", "--anotherFlag"]
    with MarkdProcess(args=["--idleShutdownTimeoutSecs", "600", *unknown]) as daemon:
        with daemon.client() as client:
            options = client.admin.command("getCmdLineOpts")
        parsed = options["parsed"]  # mongod's layout
        assert parsed["processManagement"] == {"idleShutdownTimeoutSecs": 600, "pidFilePath": str(daemon.pidfile)}
        assert parsed["net"]["port"] == daemon.port
        assert parsed["net"]["unixDomainSocket"] == {"pathPrefix": str(daemon.workdir)}
        assert parsed["systemLog"] == {"path": str(daemon.logfile), "logAppend": True, "verbosity": 1}
        assert options["argv"][1:] == daemon.command_line()[1:]
        log = daemon.wait_for_log("--anotherFlag")
        for flag in ("--setParameter", "--someFutureFlag=3", "--anotherFlag"):
            assert f"ignoring unrecognized option option={flag}" in log


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
            "systemLog:\n"
            f"  path: {root / 'from-config.log'}\n"
            "  verbosity: 1\n"
            "storage:\n"
            "  dbPath: /nonexistent\n"
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
            assert "ignoring unrecognized config file setting setting=storage.dbPath" in log
            assert "command=ping" in log  # verbosity 1 from the file: per-command debug lines
        finally:
            process.terminate()
            assert process.wait(10) == 0


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
        result = subprocess.run([MONGOCRYPTD, "--config", str(config)], capture_output=True, text=True, timeout=30)
        assert result.returncode == 2
        assert "Bad value for net.port" in result.stderr
        missing = subprocess.run([MONGOCRYPTD, "--config", str(Path(directory) / "absent.yaml")],
                                 capture_output=True, text=True, timeout=30)
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
    import socket

    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


def test_ipv6_adds_the_ipv6_loopback():
    import socket

    import pytest

    if not _ipv6_loopback_available():
        pytest.skip("no IPv6 loopback here")
    with MarkdProcess(args=["--ipv6"]) as daemon:
        for host in ("127.0.0.1", "::1"):
            with socket.create_connection((host, daemon.port), timeout=5):
                pass
        assert "addresses=127.0.0.1,::1" in daemon.wait_for_log("markd started")
        assert "non-loopback" not in daemon.log_text()


def test_bind_ip_list():
    with MarkdProcess(args=["--bind_ip", "127.0.0.1,localhost"]) as daemon:
        assert "addresses=127.0.0.1,localhost" in daemon.wait_for_log("markd started")
