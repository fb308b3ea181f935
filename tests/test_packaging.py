"""Packaging: the wheel the Dockerfile builds, its console scripts, the health probe, the service files.

No Docker engine or systemd is needed: the wheel is built from exactly the files the Dockerfile
copies, installed into a fresh venv, and started with the Dockerfile's own ENTRYPOINT + CMD and
HEALTHCHECK (port and /run/markd swapped for a free port and a temp dir).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from markd.config import load_config_file
from markd.wire import FrameReader, encode_op_msg
from tests.support.process import PATIENCE, free_port, wait_for_port

REPO = Path(__file__).resolve().parents[1]
# PyPI's "markd" is an unrelated project: ours is distributed as markd-cryptd (import package markd).
DISTRIBUTION = "markd-cryptd"
WHEEL_PREFIX = DISTRIBUTION.replace("-", "_")
DOCKERFILE = REPO / "Dockerfile"
UNIT = REPO / "systemd" / "markd.service"
SERVICE_YAML = REPO / "systemd" / "markd.yaml"
COMPOSE = REPO / "examples" / "sidecar" / "docker-compose.yml"
K8S_POD = REPO / "examples" / "sidecar" / "k8s-pod.yaml"


# ---- Dockerfile parsing ------------------------------------------------------------------------
def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, rest = line.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    return instructions


def instruction(name: str) -> list[str]:
    return [args for keyword, args in dockerfile_instructions() if keyword == name]


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def healthcheck_command() -> list[str]:
    (args,) = instruction("HEALTHCHECK")
    _, _, command = args.partition("CMD ")
    return exec_form(command)


def container_command() -> list[str]:
    (entrypoint,) = instruction("ENTRYPOINT")
    (cmd,) = instruction("CMD")
    return exec_form(entrypoint) + exec_form(cmd)


def build_stage_copies() -> list[str]:
    """Sources of the build stage's COPY lines (the Docker build context the wheel comes from)."""
    sources: list[str] = []
    stage = 0
    for keyword, args in dockerfile_instructions():
        if keyword == "FROM":
            stage += 1
        elif keyword == "COPY" and stage == 1 and "--from" not in args:
            sources += args.split()[:-1]
    return sources


# ---- the installed wheel -----------------------------------------------------------------------
@dataclass
class Installed:
    wheel: Path
    venv: Path

    @property
    def bin(self) -> Path:
        return self.venv / "bin"

    def resolve(self, argv: list[str], port: int, rundir: Path) -> list[str]:
        """The container's argv as it would run here: its own venv, a free port, a temp /run/markd."""
        out = []
        for arg in argv:
            if (self.bin / arg).exists() and "/" not in arg:
                arg = str(self.bin / arg)
            out.append(arg.replace("27020", str(port)).replace("/run/markd", str(rundir)))
        return out


def _pip(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    root = tmp_path_factory.mktemp("packaging")
    context = root / "context"
    context.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for source in build_stage_copies():
        path = REPO / source
        if path.is_dir():
            shutil.copytree(path, context / source, ignore=ignore)
        else:
            shutil.copy2(path, context / source)
    wheels = root / "wheels"
    # As the Dockerfile's `pip wheel .` (isolated build); offline fallback to the current setuptools.
    built = _pip("wheel", "--no-deps", "--wheel-dir", str(wheels), ".", cwd=context)
    if built.returncode != 0:
        built = _pip("wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(wheels), ".", cwd=context)
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = wheels.glob(f"{WHEEL_PREFIX}-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    done = _pip("--python", str(venv / "bin" / "python"), "install", "--no-deps", "--no-index", str(wheel))
    assert done.returncode == 0, done.stdout + done.stderr
    # Dependencies (pymongo/bson, click, PyYAML, uvloop) from this interpreter, without network. A plain
    # path entry, not a site dir: this interpreter's .pth files (its editable markd among them) stay inert.
    site_dir = next((venv / "lib").glob("python*/site-packages"))
    paths = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (site_dir / "zz_markd_test_deps.pth").write_text("\n".join(paths) + "\n")
    return Installed(wheel, venv)


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}


@dataclass
class Daemon:
    process: subprocess.Popen[bytes]
    log: Path
    port: int

    def log_lines(self) -> list[str]:
        return self.log.read_text(errors="replace").splitlines()

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(PATIENCE)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise


StartDaemon = Callable[[list[str], int], "Daemon"]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[StartDaemon]:
    daemons: list[Daemon] = []

    def _start(argv: list[str], port: int) -> Daemon:
        log = tmp_path / f"stdout-{len(daemons)}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(argv, cwd=tmp_path, env=clean_env(), stdout=out, stderr=subprocess.STDOUT)
        daemon = Daemon(process, log, port)
        daemons.append(daemon)
        try:
            wait_for_port(port)
        except TimeoutError:
            process.kill()
            raise AssertionError(f"{argv} did not listen: {log.read_text(errors='replace')}") from None
        return daemon

    yield _start
    for daemon in daemons:
        if daemon.process.poll() is None:
            daemon.process.kill()
            daemon.process.wait()


def run_in_venv(installed: Installed, argv: list[str], timeout: float = PATIENCE) -> subprocess.CompletedProcess[str]:
    """Run from the venv's directory, not the checkout: `python -m`/`-c` put the cwd first on sys.path."""
    return subprocess.run(argv, cwd=installed.venv, env=clean_env(), capture_output=True, text=True,
                          timeout=timeout)


def run_probe(installed: Installed, args: list[str], timeout: float = PATIENCE) -> subprocess.CompletedProcess[str]:
    return run_in_venv(installed, [str(installed.bin / "python"), "-m", "markd.healthcheck", *args], timeout)


# ---- the wheel ---------------------------------------------------------------------------------
def test_wheel_has_package_and_console_scripts(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = wheel.namelist()
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        scripts = wheel.read(entry_points).decode()
    for module in ("markd/cli.py", "markd/healthcheck.py", "markd/wire/codec.py", "markd/server.py"):
        assert module in names
    assert not any("__pycache__" in name or name.startswith("tests/") for name in names)
    assert re.search(r"^markd\s*=\s*markd\.cli:main$", scripts, re.M), scripts
    assert re.search(r"^mongocryptd\s*=\s*markd\.cli:main$", scripts, re.M), scripts
    assert "markd/__main__.py" in names  # python -m markd


def test_wheel_is_ours_by_name_and_carries_the_license(installed: Installed) -> None:
    assert installed.wheel.name.startswith(f"{WHEEL_PREFIX}-0.1.0-"), installed.wheel.name
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = wheel.namelist()
        metadata = wheel.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        # setuptools < 77 writes .dist-info/LICENSE, newer ones .dist-info/licenses/LICENSE (PEP 639)
        (license_name,) = [n for n in names if re.fullmatch(r"[^/]+\.dist-info/(licenses/)?LICENSE", n)]
        shipped = wheel.read(license_name).decode()
    assert re.search(rf"^Name: {DISTRIBUTION}$", metadata, re.M), metadata[:300]
    assert re.search(r"^License: Apache-2\.0$", metadata, re.M)
    assert shipped == (REPO / "LICENSE").read_text()
    assert "Apache License" in shipped and "Version 2.0, January 2004" in shipped
    assert "END OF TERMS AND CONDITIONS" in shipped  # the full text, not a pointer to it


def test_docs_install_our_distribution_and_stay_inside_the_repository() -> None:
    """Install lines name markd-cryptd or a checkout, never PyPI's unrelated `markd`; wheel paths have our
    wheel's name; nothing cites a harness a clone does not contain."""
    texts = {path: path.read_text() for path in [REPO / "README.md", REPO / "systemd" / "markd.service",
                                                 *sorted((REPO / "docs").glob("*.md"))]}
    for path, text in texts.items():
        for line in text.splitlines():
            if re.search(r"pip install\s+markd(?![-_\w])", line):
                assert re.search(r"\b(never|not|nor)\b", line, re.I), f"{path.name}: {line}"
            assert not re.search(r"dist/markd-[0-9*<]", line), f"{path.name}: {line}"
            assert "../shared" not in line and "spec-harness" not in line, f"{path.name}: {line}"
    assert "markd-cryptd" in texts[REPO / "README.md"]
    for name in ("LICENSE", "SECURITY.md", "CHANGELOG.md"):
        assert (REPO / name).is_file() and f"({name})" in texts[REPO / "README.md"], name


def test_installed_markd_comes_from_the_wheel(installed: Installed) -> None:
    code = "import markd, markd.healthcheck, markd.cli; print(markd.__file__, markd.healthcheck.__file__)"
    out = run_in_venv(installed, [str(installed.bin / "python"), "-c", code]).stdout.split()
    assert len(out) == 2 and all(Path(f).is_relative_to(installed.venv) for f in out), out
    version = run_in_venv(installed, [str(installed.bin / "mongocryptd"), "--version"])
    assert version.returncode == 0 and "markd 0.1.0" in version.stdout
    as_module = run_in_venv(installed, [str(installed.bin / "python"), "-m", "markd", "--version"])
    assert as_module.returncode == 0 and as_module.stdout == version.stdout
    code = f"from importlib.metadata import version; print(version({DISTRIBUTION!r}))"
    assert run_in_venv(installed, [str(installed.bin / "python"), "-c", code]).stdout.strip() == "0.1.0"


# ---- the container's command and health check, run here ------------------------------------------
def test_container_cmd_serves_and_healthcheck_passes(installed: Installed, start: StartDaemon, tmp_path: Path) -> None:
    port = free_port()
    rundir = tmp_path / "run-markd"
    rundir.mkdir()
    argv = installed.resolve(container_command(), port, rundir)
    assert argv[0] == str(installed.bin / "markd")
    daemon = start(argv, port)

    probe = installed.resolve(healthcheck_command(), port, rundir)
    assert probe[:3] == [str(installed.bin / "python"), "-m", "markd.healthcheck"]
    health = run_in_venv(installed, probe)
    assert health.returncode == 0, health.stdout + health.stderr
    verbose = run_probe(installed, ["--port", str(port)])
    assert verbose.returncode == 0 and "ok" in verbose.stdout

    pid = json.loads((rundir / "mongocryptd.pid").read_text())
    assert pid["port"] == port and pid["pid"] == daemon.process.pid and pid["domainSocket"] == ""
    assert daemon.stop() == 0  # SIGTERM, as `docker stop` sends it
    assert not (rundir / "mongocryptd.pid").exists()

    records = [json.loads(line) for line in daemon.log_lines()]  # --logFormat json: every line is JSON
    messages = [r["msg"] for r in records]
    started = next(r for r in records if r["msg"] == "markd started")
    assert started["attr"]["addresses"] == "0.0.0.0" and started["attr"]["unixSocket"] == ""
    assert any(r["s"] == "WARNING" and "non-loopback" in r["msg"] for r in records), messages
    assert messages[-1] == "markd stopped"


def test_mongocryptd_script_with_the_service_yaml(installed: Installed, start: StartDaemon, tmp_path: Path) -> None:
    port = free_port()
    argv = [str(installed.bin / "mongocryptd"), "--config", str(SERVICE_YAML), "--port", str(port),
            "--pidfilepath", str(tmp_path / "mongocryptd.pid"), "--unixSocketPrefix", str(tmp_path)]
    daemon = start(argv, port)
    sock = tmp_path / "mongocryptd.sock"
    assert run_probe(installed, ["--port", str(port)]).returncode == 0
    by_socket = run_probe(installed, ["--socket", str(sock)])
    assert by_socket.returncode == 0, by_socket.stderr
    pid = json.loads((tmp_path / "mongocryptd.pid").read_text())
    assert pid == {"port": port, "domainSocket": str(sock), "pid": daemon.process.pid}
    assert daemon.stop() == 0
    records = [json.loads(line) for line in daemon.log_lines()]  # systemLog.format: json
    assert records[0]["msg"] == "markd started" and records[0]["attr"]["addresses"] == "127.0.0.1"
    assert not any(r["s"] == "WARNING" for r in records), records


def test_healthcheck_fails_on_a_closed_port(installed: Installed) -> None:
    result = run_probe(installed, ["--port", str(free_port()), "--timeout", "2"])
    assert result.returncode == 1
    assert "UNHEALTHY" in result.stderr


def test_healthcheck_fails_on_a_missing_socket(installed: Installed, tmp_path: Path) -> None:
    result = run_probe(installed, ["--socket", str(tmp_path / "nothing.sock"), "--timeout", "2"])
    assert result.returncode == 1


def self_signed_pem(directory: Path) -> Path:
    """A key + self-signed certificate for localhost/127.0.0.1, in one PEM (markd's --tlsCertificateKeyFile)."""
    x509 = pytest.importorskip("cryptography.x509")
    import datetime
    import ipaddress

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    pem = directory / "markd.pem"
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()) + cert.public_bytes(serialization.Encoding.PEM))
    (directory / "ca.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return pem


def test_healthcheck_over_tls(installed: Installed, start: StartDaemon, tmp_path: Path) -> None:
    pem = self_signed_pem(tmp_path)
    ca = tmp_path / "ca.pem"
    port = free_port()
    start([str(installed.bin / "markd"), "--port", str(port), "--nounixsocket", "--pidfilepath",
           str(tmp_path / "markd.pid"), "--tlsMode", "requireTLS", "--tlsCertificateKeyFile", str(pem)], port)
    base = ["--host", "127.0.0.1", "--port", str(port), "--timeout", str(PATIENCE / 2)]
    verified = run_probe(installed, [*base, "--tls", "--tlsCAFile", str(ca)])
    assert verified.returncode == 0, verified.stderr
    assert run_probe(installed, [*base, "--tlsAllowInvalidCertificates"]).returncode == 0
    assert run_probe(installed, [*base, "--tls"]).returncode == 1  # self-signed, not in the system store
    assert run_probe(installed, base).returncode == 1  # plaintext hello to a TLS port


class FakeServer:
    """Accepts connections on a free port and answers each first frame as `mode` says."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        # "half-frame" and "silent" hold the connection open until the test has its verdict: a probe that
        # ignored its --timeout would hang until run_probe's own (generous) timeout fails the test.
        self.release = threading.Event()
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(4)
        self.port = int(self.listener.getsockname()[1])
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        with self.listener:
            conn, _ = self.listener.accept()
            with conn:
                conn.settimeout(10)
                reader = FrameReader()
                frames: list[bytes] = []
                while not frames:
                    data = conn.recv(65536)
                    if not data:
                        return
                    frames = reader.feed(data)
                request_id = int.from_bytes(frames[0][4:8], "little", signed=True)
                replies = {
                    "cryptd": {"ok": 1, "iscryptd": True, "maxWireVersion": 25},
                    "mongod": {"ok": 1, "isWritablePrimary": True, "maxWireVersion": 25},
                    "error": {"ok": 0, "errmsg": "no", "code": 1},
                    "iscryptd-string": {"ok": 1, "iscryptd": "true"},
                }
                if self.mode in replies:
                    conn.sendall(encode_op_msg(request_id, replies[self.mode]))
                elif self.mode == "wrong-response-to":
                    conn.sendall(encode_op_msg(request_id + 1, {"ok": 1, "iscryptd": True}))
                elif self.mode == "garbage":
                    conn.sendall(b"\x10\x00\x00\x00" + b"\xff" * 12)
                elif self.mode == "half-frame":
                    conn.sendall(encode_op_msg(request_id, {"ok": 1, "iscryptd": True})[:20])
                    self.release.wait(PATIENCE * 2)
                elif self.mode == "silent":
                    self.release.wait(PATIENCE * 2)
                # "close": nothing


@pytest.mark.parametrize("mode", ["mongod", "error", "iscryptd-string", "wrong-response-to", "garbage",
                                  "half-frame", "silent", "close"])
def test_healthcheck_rejects_what_is_not_a_healthy_cryptd(installed: Installed, mode: str) -> None:
    server = FakeServer(mode)
    try:
        result = run_probe(installed, ["--port", str(server.port), "--timeout", "1"], timeout=PATIENCE)
    finally:
        server.release.set()
    assert result.returncode == 1, (mode, result.stdout, result.stderr)


def test_healthcheck_accepts_a_cryptd_reply(installed: Installed) -> None:
    """The fake server harness itself: the same probe passes when the reply is right."""
    server = FakeServer("cryptd")
    result = run_probe(installed, ["--port", str(server.port), "--timeout", str(PATIENCE / 2)])
    assert result.returncode == 0, result.stderr


def test_healthcheck_does_not_load_mongoclient(installed: Installed) -> None:
    code = ("import sys, markd.healthcheck; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pymongo', 'uvloop', 'click', 'yaml')))")
    result = run_in_venv(installed, [str(installed.bin / "python"), "-c", code])
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stdout + result.stderr


# ---- Dockerfile, .dockerignore ---------------------------------------------------------------------
def test_dockerfile_shape() -> None:
    stages = instruction("FROM")
    assert len(stages) == 2 and all("-slim" in s for s in stages), stages
    (user,) = instruction("USER")
    assert user.split(":")[0] not in ("root", "0")
    assert instruction("EXPOSE") == ["27020"]
    assert instruction("STOPSIGNAL") == ["SIGTERM"]
    argv = container_command()  # exec form, so markd is PID 1 and gets SIGTERM itself
    assert argv[0] == "markd" and "--bind_ip_all" in argv and "--nounixsocket" in argv
    assert argv[argv.index("--port") + 1] == "27020"
    assert healthcheck_command()[:3] == ["python", "-m", "markd.healthcheck"]
    assert any("pip wheel" in run for run in instruction("RUN"))
    # The runtime stage installs our distribution by its own name, offline, from the build stage's wheels.
    assert any(re.search(rf"install --no-index --find-links=/wheels {DISTRIBUTION}\b", run)
               for run in instruction("RUN"))
    assert "LICENSE" in build_stage_copies()


def test_dockerignore_admits_exactly_the_build_context() -> None:
    lines = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines()]
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    assert "*" in lines
    assert set(build_stage_copies()) == allowed
    readme = re.search(r'^readme\s*=\s*"([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M)
    assert readme is not None and readme.group(1) in allowed  # setuptools needs it to build


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint not installed")
def test_hadolint() -> None:
    result = subprocess.run(["hadolint", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# ---- systemd ---------------------------------------------------------------------------------------
def unit_directives(text: str) -> dict[str, list[str]]:
    directives: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        directives.setdefault(key.strip(), []).append(value.strip())
    return directives


def test_unit_is_unprivileged_restarting_and_hardened() -> None:
    unit = unit_directives(UNIT.read_text())
    one = {key: values[-1] for key, values in unit.items()}
    assert one["ExecStart"].split()[1:] == ["--config", "/etc/markd/markd.yaml"]
    assert one["DynamicUser"] == "yes" or one.get("User") not in (None, "root")
    assert one["Restart"] == "on-failure"
    # markd sends READY=1 itself once listening (tests/test_cli.py), so dependents start when it serves.
    assert one["Type"] == "notify" and one.get("NotifyAccess", "main") == "main"
    assert one["RuntimeDirectory"] == "markd"
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices", "ProtectKernelTunables",
                "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups", "LockPersonality",
                "RestrictNamespaces", "MemoryDenyWriteExecute", "RestrictSUIDSGID", "RestrictRealtime"):
        assert one.get(key) == "yes", key
    assert one["ProtectSystem"] == "strict"
    assert one["CapabilityBoundingSet"] == ""
    assert set(one["RestrictAddressFamilies"].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert "@system-service" in unit["SystemCallFilter"]


def test_service_yaml_is_fully_understood() -> None:
    values, unknown = load_config_file(str(SERVICE_YAML))
    assert unknown == []
    assert values["port"] == 27020 and values["bind_ip"] == ("127.0.0.1",)
    assert values["unix_socket"] is True and values["unix_socket_prefix"] == "/run/markd"
    assert values["pidfile"] == "/run/markd/mongocryptd.pid"  # RuntimeDirectory: the only writable place


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify_and_security(installed: Installed, tmp_path: Path) -> None:
    # ExecStart must exist to verify: point it at the venv installed from the wheel.
    text = UNIT.read_text().replace("/opt/markd/bin/markd", str(installed.bin / "markd"))
    unit = tmp_path / "markd.service"
    unit.write_text(text)
    verify = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "markd.service" not in verify.stderr, verify.stderr
    security = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit)],
                              capture_output=True, text=True, timeout=60)
    if "offline" in security.stderr and security.returncode != 0:
        pytest.skip("systemd-analyze security --offline needs systemd >= 252")
    match = re.search(r"Overall exposure level for markd\.service: ([0-9.]+)", security.stdout)
    assert match is not None, security.stdout + security.stderr
    assert float(match.group(1)) <= 2.0, security.stdout


# ---- sidecar examples ------------------------------------------------------------------------------
DRIVER_OPTS = ('mongocryptd_uri="mongodb://localhost:27020"', "mongocryptd_bypass_spawn=True")


def test_compose_sidecar_shares_localhost() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    markd, app = services["markd"], services["app"]
    assert app["network_mode"] == "service:markd"
    assert "ports" not in markd  # reachable only from the shared network namespace
    assert markd["healthcheck"]["test"][:4] == ["CMD", "python", "-m", "markd.healthcheck"]
    assert app["depends_on"]["markd"]["condition"] == "service_healthy"
    text = COMPOSE.read_text()
    for option in DRIVER_OPTS:
        assert option in text
    app_code = compose["configs"]["app_py"]["content"]
    assert all(option in app_code for option in DRIVER_OPTS)
    compile(app_code, "app.py", "exec")


def test_k8s_pod_sidecar() -> None:
    (pod,) = [doc for doc in yaml.safe_load_all(K8S_POD.read_text()) if doc and doc.get("kind") == "Pod"]
    spec = pod["spec"]
    containers = {c["name"]: c for c in spec.get("initContainers", []) + spec["containers"]}
    markd = containers["markd"]
    assert markd["ports"][0]["containerPort"] == 27020
    assert markd["securityContext"]["runAsNonRoot"] is True
    assert markd["securityContext"]["readOnlyRootFilesystem"] is True
    probe = markd["readinessProbe"]["exec"]["command"]
    assert probe[:3] == ["python", "-m", "markd.healthcheck"]
    assert "app" in containers
    (config_map,) = [doc for doc in yaml.safe_load_all(K8S_POD.read_text()) if doc and doc["kind"] == "ConfigMap"]
    app_code = config_map["data"]["app.py"]
    assert all(option in app_code for option in DRIVER_OPTS)
    compile(app_code, "app.py", "exec")


def _sidecar_apps() -> dict[str, str]:
    compose = yaml.safe_load(COMPOSE.read_text())
    (config_map,) = [doc for doc in yaml.safe_load_all(K8S_POD.read_text()) if doc and doc["kind"] == "ConfigMap"]
    return {"compose": compose["configs"]["app_py"]["content"], "k8s": config_map["data"]["app.py"]}


@pytest.mark.parametrize("example", ["compose", "k8s"])
def test_sidecar_example_app_runs_as_shipped(example: str, tmp_path: Path) -> None:
    """The example's own app.py, against a real markd and the stand-in mongod: it brings its encryption
    rules (schema_map) and its data key, so nothing needs to exist on the server beforehand."""
    from tests.support.fake_mongod import FakeMongod, emulate_database
    from tests.support.process import MarkdProcess

    code = _sidecar_apps()[example]
    assert "schema_map=" in code or "encrypted_fields_map=" in code
    with MarkdProcess() as markd, emulate_database(FakeMongod()) as mongod:  # evaluates {ssn: {$eq: ...}}
        app = tmp_path / "app.py"
        app.write_text(code.replace("mongodb://localhost:27020", markd.uri))
        env = {**clean_env(), "MONGODB_URI": mongod.uri, "LOCAL_MASTER_KEY_HEX": os.urandom(96).hex()}
        result = subprocess.run([sys.executable, str(app)], cwd=tmp_path, env=env, capture_output=True, text=True,
                                timeout=PATIENCE * 2)
        assert result.returncode == 0, result.stdout + result.stderr
        (stored,) = [doc for doc in mongod.documents("app.people") if doc.get("name") == "Ada"]
    decrypted = next(line for line in result.stdout.splitlines() if line.startswith("decrypted:"))
    assert "'ssn': '123-45-6789'" in decrypted
    assert getattr(stored["ssn"], "subtype", None) == 6 and b"123-45-6789" not in bytes(stored["ssn"])


@pytest.mark.skipif(shutil.which("kubernetes-validate") is None, reason="kubernetes-validate not installed")
def test_k8s_pod_validates_against_the_api_schema() -> None:
    for version in ("1.29.0", "1.37.0"):  # 1.29: native sidecars (initContainers restartPolicy)
        result = subprocess.run(["kubernetes-validate", "--strict", "-k", version, str(K8S_POD)],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr


def test_healthcheck_module_is_a_wire_level_hello() -> None:
    """The probe must frame with markd.wire, not pymongo's MongoClient."""
    source = (REPO / "markd" / "healthcheck.py").read_text()
    assert "from markd.wire import" in source
    assert "MongoClient" not in source.split('"""', 2)[2]

