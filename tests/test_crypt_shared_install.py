"""`pip install .` from a checkout's files builds mongo_crypt_v1.so; without a C compiler markd still installs.

The checkout is the repository's files as git knows them (tracked, plus new files not ignored), so
nothing built in this worktree (the editable library, environment.json) comes along.  Each install
goes into a fresh venv; markd's dependencies come from this interpreter through a .pth file, so no
network is needed beyond pip's isolated build (with an offline fallback).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from pymongo import MongoClient

import markd
from tests.support.process import free_port, wait_for_port
from tests.test_crypt_shared import VERSION_STR, _compile_host, run_c_host

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Install:
    venv: Path
    wheel: Path

    @property
    def python(self) -> str:
        return str(self.venv / "bin" / "python")

    def run(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """From the venv's directory (not the checkout, which `python -m` would put first on sys.path)."""
        environment = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        return subprocess.run(list(argv), cwd=self.venv, env=environment, capture_output=True, text=True,
                              timeout=timeout)


def _checkout(target: Path) -> Path:
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True, timeout=60).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


def _pip(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def _install(root: Path, env: dict[str, str] | None = None) -> Install:
    checkout = _checkout(root / "checkout")
    assert not (checkout / "markd" / "crypt_shared" / "mongo_crypt_v1.so").exists()
    wheels = root / "wheels"
    built = _pip("wheel", "--no-deps", "--wheel-dir", str(wheels), ".", cwd=checkout, env=env)
    if built.returncode != 0:  # offline: this interpreter's setuptools and cffi
        built = _pip("wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(wheels), ".", cwd=checkout,
                     env=env)
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = wheels.glob("markd_cryptd-*.whl")  # the distribution markd-cryptd
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    done = _pip("--python", str(venv / "bin" / "python"), "install", "--no-deps", "--no-index", str(wheel), cwd=root)
    assert done.returncode == 0, done.stdout + done.stderr
    site_dir = next((venv / "lib").glob("python*/site-packages"))
    paths = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (site_dir / "zz_markd_test_deps.pth").write_text("\n".join(paths) + "\n")
    return Install(venv, wheel)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Install:
    return _install(tmp_path_factory.mktemp("install"))


def test_pip_install_builds_the_library(installed: Install) -> None:
    done = installed.run(installed.python, "-m", "markd.crypt_shared")
    assert done.returncode == 0, done.stderr
    (path,) = done.stdout.splitlines()
    library = Path(path)
    assert library.is_absolute() and library.is_file() and library.is_relative_to(installed.venv)
    assert library.name == "mongo_crypt_v1.so"
    same = installed.run(installed.python, "-c", "import markd.crypt_shared as c; print(c.library_path())")
    assert same.stdout.strip() == path
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = wheel.namelist()
    assert "markd/crypt_shared/mongo_crypt_v1.so" in names and "markd/crypt_shared/BUILD-FAILED.txt" not in names
    assert "markd/crypt_shared/environment.json" not in names  # only editable installs record one
    assert "-none-any" not in installed.wheel.name  # a platform wheel: it holds compiled code


def test_a_c_program_uses_the_installed_library(installed: Install, tmp_path: Path) -> None:
    """No checkout on the path, no PYTHON* variables: the embedded Python finds markd in the venv."""
    program = _compile_host(tmp_path)
    library = installed.run(installed.python, "-m", "markd.crypt_shared").stdout.strip()
    lines = run_c_host(program, library, tmp_path)
    assert lines["VERSION"] == VERSION_STR
    assert "code 51118" in lines["REFUSED"]


def test_without_a_compiler_markd_installs_and_says_why(tmp_path: Path) -> None:
    installed = _install(tmp_path, env=dict(os.environ, CC=str(tmp_path / "no-such-cc")))
    done = installed.run(installed.python, "-m", "markd.crypt_shared")
    assert done.returncode == 1 and done.stdout == ""
    assert "mongo_crypt_v1.so was not built when markd was installed" in done.stderr
    assert "no-such-cc" in done.stderr and "markd runs as a daemon without it" in done.stderr
    # ... and markd runs as a daemon.
    port = free_port()
    daemon = subprocess.Popen([str(installed.venv / "bin" / "markd"), f"--port={port}", "--nounixsocket",
                               f"--pidfilepath={tmp_path / 'markd.pid'}"], cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        with MongoClient(f"mongodb://127.0.0.1:{port}", serverSelectionTimeoutMS=5000) as client:
            assert client.admin.command("buildInfo")["markdVersion"] == markd.__version__
    finally:
        daemon.terminate()
        daemon.wait(15)
