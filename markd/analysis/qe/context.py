"""What every rule needs while marking one command: the schema in force and what has been marked."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from bson.binary import Binary

from markd.analysis.qe.fields import EncryptedFields, EncryptionInformation


@dataclass
class Tally:
    """Shared by every view of one command's context."""

    placeholders: int = 0


@dataclass(frozen=True)
class Context:
    """One command's schema in force plus its shared tally; views differ in schema or payload counter."""

    schema: EncryptedFields
    information: EncryptionInformation
    database: str
    collation: Mapping[str, Any] | None = None
    tally: Tally = field(default_factory=Tally)
    payload_ids: Iterator[int] = field(default_factory=itertools.count)
    # Whether an expression may compare an encrypted field here (not inside $group accumulators).
    encrypted_comparisons: bool = True

    def marked(self, placeholder: Binary) -> Binary:
        """Count a placeholder going into the result (the reply's hasEncryptionPlaceholders)."""
        self.tally.placeholders += 1
        return placeholder

    def payload_id(self) -> int:
        return next(self.payload_ids)

    def for_filter(self) -> Context:
        """Range payload ids count up from 0 within each filter, as mongocryptd numbers them."""
        return replace(self, payload_ids=itertools.count())

    def with_schema(self, schema: EncryptedFields) -> Context:
        return replace(self, schema=schema)

    def without_encrypted_comparisons(self) -> Context:
        return replace(self, encrypted_comparisons=False)

    @property
    def non_simple_collation(self) -> bool:
        return isinstance(self.collation, Mapping) and self.collation.get("locale", "simple") != "simple"
