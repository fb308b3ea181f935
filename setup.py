"""One build step on top of pyproject.toml: markd's in-process library, mongo_crypt_v1.so.

`pip install .` (and `pip wheel .`) build it into the installed package; `pip install -e .` into
the checkout's markd/crypt_shared/.  Without a C compiler the step records why and markd installs
anyway (markd/crypt_shared/build.py).  Everything else about the package is in pyproject.toml.
"""

from __future__ import annotations

import importlib.util
import sysconfig
from pathlib import Path
from types import ModuleType

from setuptools import Command, setup
from setuptools.command.build import build
from setuptools.dist import Distribution

HERE = Path(__file__).resolve().parent


def _builder() -> ModuleType:
    """markd/crypt_shared/build.py, loaded by path: importing markd would need its dependencies."""
    path = HERE / "markd" / "crypt_shared" / "build.py"
    spec = importlib.util.spec_from_file_location("markd_crypt_shared_build", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildCryptShared(Command):
    description = "build mongo_crypt_v1.so, markd's Automatic Encryption Shared Library"
    user_options: list[tuple[str, str | None, str]] = []

    def initialize_options(self) -> None:
        self.build_lib: str | None = None
        self.build_temp: str | None = None
        self.editable_mode = False  # set by setuptools for `pip install -e`
        self.outputs: list[str] = []

    def finalize_options(self) -> None:
        self.set_undefined_options("build", ("build_lib", "build_lib"), ("build_temp", "build_temp"))

    def run(self) -> None:
        builder = _builder()
        if self.editable_mode:
            # The package is imported from the checkout; a host without Python needs to be told
            # where this environment keeps markd's dependencies.
            paths = sysconfig.get_paths()
            site_dirs = list(dict.fromkeys([paths["purelib"], paths["platlib"]]))
            builder.build(HERE / "markd" / "crypt_shared", Path(self.build_temp or "build"), site_dirs=site_dirs)
            return
        assert self.build_lib is not None
        Path(self.build_temp or "build").mkdir(parents=True, exist_ok=True)
        written = builder.build(Path(self.build_lib, "markd", "crypt_shared"), Path(self.build_temp or "build"))
        self.outputs = [str(path) for path in written]

    def get_outputs(self) -> list[str]:
        return self.outputs

    def get_output_mapping(self) -> dict[str, str]:
        return {}


class BuildWithCryptShared(build):
    sub_commands = [*build.sub_commands, ("build_crypt_shared", None)]


class PlatformDistribution(Distribution):
    """The wheel holds a compiled library: tag it for this platform and Python, not py3-none-any."""

    def has_ext_modules(self) -> bool:
        return True


setup(cmdclass={"build": BuildWithCryptShared, "build_crypt_shared": BuildCryptShared},
      distclass=PlatformDistribution)
