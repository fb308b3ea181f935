"""Dotted field paths ("a.b.c") as MongoDB reads them: split, join, prefix tests."""

from __future__ import annotations

from collections.abc import Iterable


def split(path: str) -> tuple[str, ...]:
    """The components of a dotted path; "" is the empty path."""
    return tuple(path.split(".")) if path else ()


def join(*parts: str | Iterable[str]) -> str:
    """Dotted path of the non-empty parts (each a component or a dotted path)."""
    pieces: list[str] = []
    for part in parts:
        if isinstance(part, str):
            if part:
                pieces.append(part)
        else:
            pieces.extend(p for p in part if p)
    return ".".join(pieces)


def is_prefix(prefix: str, path: str) -> bool:
    """True when `prefix` is `path` or one of its ancestors (component-wise, not character-wise)."""
    return path == prefix or path.startswith(prefix + ".")


def is_positional(component: str) -> bool:
    """`$`, `$[]` or `$[identifier]`: an update path component that stands for array elements."""
    return component == "$" or (component.startswith("$[") and component.endswith("]"))
