"""The one error type a command can end with, and mongocryptd's code names."""

from __future__ import annotations

# Code -> codeName for the server error codes markd replies with (names from mongod's error_codes.yml).
# Codes without a name (the numeric "assertion" codes mongocryptd raises) reply with codeName "Location<code>".
CODE_NAMES: dict[int, str] = {
    1: "InternalError",
    2: "BadValue",
    4: "NoSuchKey",
    9: "FailedToParse",
    10: "UserNotFound",
    14: "TypeMismatch",
    20: "IllegalOperation",
    22: "InvalidBSON",
    30: "InvalidPath",
    31: "RoleNotFound",
    40: "ConflictingUpdateOperators",
    51: "InvalidDBRef",
    52: "DollarPrefixedFieldName",
    53: "InvalidIdField",
    54: "NotSingleValueField",
    56: "EmptyFieldName",
    57: "DotsInFieldName",
    59: "CommandNotFound",
    72: "InvalidOptions",
    73: "InvalidNamespace",
    91: "ShutdownInProgress",
    115: "CommandNotSupported",
    168: "InvalidPipelineOperator",
    224: "QueryFeatureNotAllowed",
    238: "NotImplemented",
    334: "ErrorExtraInfo",
    10334: "BSONObjectTooLarge",
}


def code_name(code: int) -> str:
    return CODE_NAMES.get(code, f"Location{code}")


class CommandError(Exception):
    """The one error a command can end with; the server turns it into {ok: 0, errmsg, code, codeName}."""

    def __init__(self, code: int, errmsg: str, code_name_: str | None = None, redacted: str | None = None) -> None:
        super().__init__(errmsg)
        self.code = code
        self.errmsg = errmsg
        self.code_name = code_name_ or code_name(code)
        # The message with every value from the command replaced by its type (--redactErrors).
        self.redacted = errmsg if redacted is None else redacted
        # Which rule refused, and the names it refused (a path, an operator, a stage): set by the
        # analysis for explanations and logs; never a value.
        self.rule: str | None = None
        self.names: dict[str, str] = {}

    def locate(self, **names: str) -> None:
        """Say where the refusal happened (the path, operator, stage being analysed). Called on the way
        out, innermost first: a name already known is kept. Names only, never a value."""
        for name, value in names.items():
            if value and not self.names.get(name):
                self.names[name] = value

    def to_reply(self, redact: bool = False) -> dict[str, object]:
        return {"ok": 0.0, "errmsg": self.redacted if redact else self.errmsg, "code": self.code,
                "codeName": self.code_name}

    def __repr__(self) -> str:
        return f"CommandError({self.code}, {self.errmsg!r}, {self.code_name!r})"
