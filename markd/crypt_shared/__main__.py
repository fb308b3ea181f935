"""`python -m markd.crypt_shared`: the path of markd's mongo_crypt_v1 library (exit 0), or why there is none (1)."""

from __future__ import annotations

import sys

from markd.crypt_shared import LibraryUnavailable, library_path


def main() -> int:
    try:
        print(library_path())
    except LibraryUnavailable as exc:
        print(f"markd.crypt_shared: no library: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
