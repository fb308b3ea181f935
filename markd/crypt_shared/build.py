"""Builds mongo_crypt_v1.so with cffi's embedding mode; run by setup.py when markd is installed.

Needs only the standard library and cffi (it runs in pip's isolated build environment, where
markd's own dependencies are absent): the versions it compiles in are read from markd's source.

The library is optional.  When it cannot be built (no C compiler, no Python headers, ...), the
reason is written to BUILD-FAILED.txt where the library would be, markd installs anyway and runs as
a daemon, and `python -m markd.crypt_shared` tells the reason.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import sys
import sysconfig
import tempfile
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
SOURCE_ROOT = PACKAGE_DIR.parent.parent
C_SOURCE = PACKAGE_DIR / "mongo_crypt_v1.c"
MODULE_NAME = "_markd_crypt_shared"  # the embedded cffi module, as Python sees it (sys.modules)
FAILED_NOTE = "BUILD-FAILED.txt"
ENVIRONMENT_FILE = "environment.json"
LIBRARY_SUFFIX = {"darwin": ".dylib", "win32": ".dll"}.get(sys.platform, ".so")
LIBRARY_FILE = "mongo_crypt_v1" + LIBRARY_SUFFIX

# The C functions libmongocrypt calls are written in C (mongo_crypt_v1.c); these are the two it
# reaches Python through, implemented in embedded.py via the init code below.
EMBEDDING_API = """
int markd_cs_start(markd_cs_result *result);
int markd_cs_analyze(const uint8_t *document, uint32_t size, markd_cs_result *result);
"""

# What the Python side may call in C.
CDEF = """
typedef struct {
    uint8_t *data;
    uint32_t size;
    int error;
    int code;
    char *message;
} markd_cs_result;

int markd_cs_set_reply(markd_cs_result *result, const char *data, size_t size);
int markd_cs_set_error(markd_cs_result *result, int error, int code, const char *message);
const char *markd_cs_library_file(void);
int markd_cs_python_started_here(void);
const char *markd_cs_built_markd_version(void);
const char *markd_cs_built_server_version(void);
uint64_t mongo_crypt_v1_get_version(void);
const char *mongo_crypt_v1_get_version_str(void);
"""

# Runs once, in the interpreter of the process that loaded the library (started by cffi if the process
# had none).  It must not raise: a failure is kept and reported through every later call instead.
INIT_CODE = f'''
from {MODULE_NAME} import ffi, lib


def _markd_import_root():
    """The directory markd is imported from in the environment this library was installed with."""
    import os

    library = os.path.realpath(ffi.string(lib.markd_cs_library_file()).decode("utf-8", "surrogateescape"))
    return os.path.dirname(os.path.dirname(os.path.dirname(library)))


def _environment_site_dirs():
    """That environment's site directories (an editable install records them: its root is a checkout)."""
    import json
    import os

    root = _markd_import_root()
    dirs = [root]
    try:
        with open(os.path.join(root, "markd", "crypt_shared", "{ENVIRONMENT_FILE}"), encoding="utf-8") as file:
            dirs += [d for d in json.load(file)["site_dirs"] if os.path.isdir(d)]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return dirs


def _load_bridge():
    import sys

    if lib.markd_cs_python_started_here():
        # A process without Python of its own (a C program linking libmongocrypt): this interpreter
        # knows only its standard library; markd and its dependencies are in the environment it was
        # installed into, ahead of anything else.
        import site

        before = list(sys.path)
        for directory in _environment_site_dirs():
            site.addsitedir(directory)
        sys.path[:] = [p for p in sys.path if p not in before] + before
    try:
        import markd.crypt_shared.embedded as embedded
    except ImportError:
        if lib.markd_cs_python_started_here():
            raise
        # A Python host whose environment lacks markd or one of its dependencies: take them from the
        # environment this library was installed with, after everything the host has (plain path
        # entries: that environment's .pth files are not the host's business).
        for directory in _environment_site_dirs():
            if directory not in sys.path:
                sys.path.append(directory)
        import markd.crypt_shared.embedded as embedded
    return embedded.Bridge(ffi, lib)


try:
    _markd_bridge = _load_bridge()
    _markd_failure = b""
except BaseException as exc:
    import sys as _sys

    _markd_bridge = None
    _markd_failure = (
        "markd: the mongo_crypt_v1 library cannot load markd into Python "
        + _sys.version.split()[0] + " (" + type(exc).__name__ + ": " + str(exc) + "); install markd "
        "into the environment the library belongs to, or put it on PYTHONPATH"
    ).encode("utf-8", "replace")


@ffi.def_extern(error=-1)
def markd_cs_start(result):
    if _markd_bridge is None:
        lib.markd_cs_set_error(result, 2, 1, _markd_failure)
        return 2
    return _markd_bridge.start(result)


@ffi.def_extern(error=-1)
def markd_cs_analyze(document, size, result):
    if _markd_bridge is None:
        lib.markd_cs_set_error(result, 2, 1, _markd_failure)
        return 2
    return _markd_bridge.analyze(document, size, result)
'''


def _assigned_string(path: Path, name: str) -> str:
    """The string literal assigned to `name` at the top level of a Python file."""
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if (isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets)
                and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)):
            return node.value.value
    raise LookupError(f"no {name} = '...' in {path}")


def versions(source_root: Path = SOURCE_ROOT) -> tuple[str, str]:
    """(markd's version, the server version markd implements), from markd's source."""
    return (_assigned_string(source_root / "markd" / "__init__.py", "__version__"),
            _assigned_string(source_root / "markd" / "commands.py", "SERVER_VERSION"))


def version_number(server_version: str) -> int:
    """mongo_crypt_v1_get_version's encoding: major << 48 | minor << 32 | patch << 16."""
    major, minor, patch = (int(part) for part in server_version.split("."))
    return major << 48 | minor << 32 | patch << 16


def version_string(markd_version: str, server_version: str) -> str:
    return f"markd {markd_version} (mongo_crypt_v1 {server_version})"


def make_ffi(source_root: Path = SOURCE_ROOT):  # type: ignore[no-untyped-def]  # cffi has no type hints
    import cffi

    markd_version, server_version = versions(source_root)
    macros = (
        f'#define MARKD_CS_MARKD_VERSION "{markd_version}"\n'
        f'#define MARKD_CS_SERVER_VERSION "{server_version}"\n'
        f"#define MARKD_CS_VERSION UINT64_C({version_number(server_version):#x})\n"
        f'#define MARKD_CS_VERSION_STR "{version_string(markd_version, server_version)}"\n'
    )
    link_args = ["-Wl,-z,nodelete"]  # libmongocrypt dlcloses it; Python keeps pointers into it
    library_dirs: list[str] = []
    runtime_library_dirs: list[str] = []
    libdir = sysconfig.get_config_var("LIBDIR")
    if sysconfig.get_config_var("Py_ENABLE_SHARED") and libdir:
        # A C host must find this Python's libpython where it was at build time.
        library_dirs.append(libdir)
        runtime_library_dirs.append(libdir)
    ffi = cffi.FFI()
    ffi.cdef(CDEF)
    ffi.embedding_api(EMBEDDING_API)
    ffi.set_source(MODULE_NAME, macros + C_SOURCE.read_text(encoding="utf-8"),
                   extra_compile_args=["-fvisibility=hidden"], extra_link_args=link_args,
                   library_dirs=library_dirs, runtime_library_dirs=runtime_library_dirs)
    ffi.embedding_init_code(INIT_CODE)
    return ffi


def build(target_dir: Path, temp_dir: Path | None = None, *, site_dirs: list[str] | None = None) -> list[Path]:
    """Build the library into target_dir; the files written (the library, or the failure note).

    `site_dirs`: for an editable install, the environment's site directories, for a host without
    Python to find markd's dependencies (the library sits in the checkout, not in that environment).
    """
    target_dir.mkdir(parents=True, exist_ok=True)
    library = target_dir / LIBRARY_FILE
    note = target_dir / FAILED_NOTE
    environment = target_dir / ENVIRONMENT_FILE
    work = Path(tempfile.mkdtemp(prefix="markd-crypt-shared-", dir=temp_dir))
    try:
        built = Path(make_ffi().compile(tmpdir=str(work), target="mongo_crypt_v1.*"))
        # Replaced, not rewritten: a process that has the old library mapped keeps it intact.
        staged = target_dir / f".{LIBRARY_FILE}.new"
        shutil.copyfile(built, staged)
        os.chmod(staged, 0o755)
        os.replace(staged, library)
    except Exception as exc:  # no compiler, no headers, a link error: markd still installs
        library.unlink(missing_ok=True)
        reason = (f"mongo_crypt_v1{LIBRARY_SUFFIX} was not built when markd was installed: "
                  f"{type(exc).__name__}: {exc}\n"
                  "markd runs as a daemon without it. For in-process analysis, install a C compiler and "
                  "this Python's headers (Debian: apt-get install gcc python3-dev) and reinstall markd.\n")
        note.write_text(reason, encoding="utf-8")
        print(f"warning: {reason}", file=sys.stderr)
        return [note]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    note.unlink(missing_ok=True)
    written = [library]
    if site_dirs:
        environment.write_text(json.dumps({"site_dirs": site_dirs}) + "\n", encoding="utf-8")
        written.append(environment)
    else:
        environment.unlink(missing_ok=True)
    return written


if __name__ == "__main__":  # by hand, into the checkout: python markd/crypt_shared/build.py
    paths = sysconfig.get_paths()
    for path in build(PACKAGE_DIR, site_dirs=list(dict.fromkeys([paths["purelib"], paths["platlib"]]))):
        print(path)
