"""CRC-32C (Castagnoli), for the OP_MSG checksum.

Drivers rarely send checksums, so a table-driven implementation is enough; the optional
`crc32c` package (C, SSE4.2) is used when it is installed.
"""

from __future__ import annotations

from collections.abc import Callable

_POLY = 0x82F63B78


def _make_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ _POLY if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE: list[int] = []  # built on first use: few drivers send checksums


def _crc32c_py(data: bytes | memoryview) -> int:
    crc = 0xFFFFFFFF
    if not _TABLE:
        _TABLE.extend(_make_table())
    table = _TABLE
    for byte in bytes(data):
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


crc32c: Callable[[bytes | memoryview], int]
try:  # pragma: no cover - depends on an optional package
    from crc32c import crc32c as _crc32c_c

    def crc32c(data: bytes | memoryview) -> int:
        return _crc32c_c(bytes(data))

except ImportError:
    crc32c = _crc32c_py
