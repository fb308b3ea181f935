"""markd in-process: a drop-in Automatic Encryption Shared Library (mongo_crypt_v1).

Installing markd builds `mongo_crypt_v1.so` into this package (setup.py, with cffi).  libmongocrypt
loads it when a driver is given its path, and asks it, in-process, for every marking; the library
answers with markd's one analysis, the replies byte for byte the daemon's:

    AutoEncryptionOpts(..., crypt_shared_lib_path=markd.crypt_shared.library_path(),
                       crypt_shared_lib_required=True)

`python -m markd.crypt_shared` prints the library's path, or why there is none.
"""

from __future__ import annotations

from pathlib import Path

from markd.crypt_shared.build import FAILED_NOTE, LIBRARY_FILE

PACKAGE_DIR = Path(__file__).resolve().parent


class LibraryUnavailable(RuntimeError):
    """This installation of markd has no mongo_crypt_v1 library; the message says why."""


def library_path() -> str:
    """The absolute path of the built mongo_crypt_v1 library; LibraryUnavailable if there is none."""
    library = PACKAGE_DIR / LIBRARY_FILE
    if library.is_file():
        return str(library)
    note = PACKAGE_DIR / FAILED_NOTE
    if note.is_file():
        raise LibraryUnavailable(note.read_text(encoding="utf-8", errors="replace").strip())
    raise LibraryUnavailable(
        f"{LIBRARY_FILE} has not been built in {PACKAGE_DIR}: it is built when markd is installed "
        "(pip install . or pip install -e . in a checkout; needs a C compiler and this Python's headers). "
        "markd runs as a daemon without it.")


__all__ = ["LibraryUnavailable", "library_path"]
