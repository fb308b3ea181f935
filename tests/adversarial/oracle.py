"""The oracle: a plain search of markd's reply for secrets, sharing no code with markd.

It reads raw BSON with `rawbson.walk` (this package's own reader) and knows nothing of commands,
schemas or analysis.  Verdicts, for one (command bytes, reply bytes) pair:

- LEAK: an accepted reply (ok: 1) carries a secret in `result` outside a BinData subtype 6 payload,
  in any string, number, date, key, regex, code or binary, or anywhere in the raw bytes;
- FLAG: the command carries a secret and the reply says schemaRequiresEncryption false: libmongocrypt
  then skips `result` and sends the ORIGINAL command to the server;
- FLAG-HEP: the command carries a secret and the reply says hasEncryptionPlaceholders false (with
  schemaRequiresEncryption true).  The contract (section 4) says libmongocrypt then sends the original
  command; libmongocrypt's source reads a misspelt "hasEncryptedPlaceholders" and uses `result` anyway,
  so this is a leak for a client that honours the contract, and a contradiction in the reply either way;
- CRASH: an error reply with code 1 (InternalError), or the connection dropped;
- DUPLICATE: the command repeats a key in a place the contract says must be refused, and was accepted;
- MALFORMED: a placeholder that is neither FLE1 {a, ki|ka, v} nor FLE2 {t, a, ki, ku, v, cm, s?}, or a
  reply envelope without its flags and result;
- ERRMSG (informational): an error reply whose message quotes a secret (it goes back to the application,
  not to the server);
- DROPPED (informational, not a leak): a secret of the command is in no placeholder of an accepted
  reply, so the query libmongocrypt sends is not the one the application wrote.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from tests.adversarial import rawbson, secrets

LEAK, FLAG, FLAG_HEP, CRASH, DUPLICATE, MALFORMED, ERRMSG, DROPPED = (
    "LEAK", "FLAG", "FLAG-HEP", "CRASH", "DUPLICATE", "MALFORMED", "ERRMSG", "DROPPED")
FAILING = frozenset({LEAK, FLAG, FLAG_HEP, CRASH, DUPLICATE, MALFORMED})

FLE1_KEYS = ({"a", "ki", "v"}, {"a", "ka", "v"})
FLE2_REQUIRED = {"t", "a", "ki", "ku", "v", "cm"}


@dataclass(frozen=True)
class Verdict:
    kind: str
    serials: tuple[int, ...] = ()  # the secrets concerned
    detail: str = ""


@dataclass
class Scan:
    """What one walk of a BSON buffer found."""

    plaintext: set[int] = field(default_factory=set)  # serials in clear
    placeholders: list[bytes] = field(default_factory=list)  # BinData 6 payloads
    where: dict[int, str] = field(default_factory=dict)  # serial -> first path it was seen at


def _serials(element: rawbson.Element) -> list[int]:
    found = secrets.in_text(element.key)
    value = element.value
    if element.kind in (0x02, 0x0B, 0x0C, 0x0D, 0x0E, 0x0F) and isinstance(value, str):
        found += secrets.in_text(value)
    elif element.kind in (0x01, 0x10, 0x12, 0x09) and isinstance(value, (int, float)):
        found += secrets.in_number(value)
    elif element.kind == 0x13 and isinstance(value, bytes):
        found += secrets.in_decimal128(value)
    elif element.kind == 0x05 and isinstance(value, bytes):
        found += secrets.in_text(value.decode("latin-1"))
    return found


def scan(data: bytes) -> Scan:
    """Secrets in clear anywhere in `data` outside BinData 6, and the BinData 6 payloads."""
    result = Scan()
    blanked = bytearray(data)
    for element in rawbson.walk(data):
        if element.kind == 0x05 and element.subtype == 6:
            result.placeholders.append(bytes(element.value))
            blanked[element.start : element.end] = b"\x00" * (element.end - element.start)
            continue
        for serial in _serials(element):
            result.plaintext.add(serial)
            result.where.setdefault(serial, ".".join(element.path))
    # Belt and braces: the raw bytes outside placeholders, whatever the structure says.
    for serial in secrets.in_text(blanked.decode("latin-1")):
        result.plaintext.add(serial)
        result.where.setdefault(serial, "(raw bytes)")
    return result


def command_secrets(command: bytes) -> set[int]:
    return scan(command).plaintext


def placeholder_problem(payload: bytes) -> str | None:
    """Why a BinData 6 payload is not a well-formed FLE1 or FLE2 placeholder, or None."""
    if not payload:
        return "empty payload"
    try:
        elements = [e for e in rawbson.walk(payload, 1) if len(e.path) == 1]
    except (rawbson.BSONError, ValueError, IndexError) as exc:
        return f"payload is not BSON after byte 0: {exc}"
    keys = {e.key: e for e in elements}
    if len(keys) != len(elements):
        return "placeholder repeats a key"
    if payload[0] == 0:
        if set(keys) not in FLE1_KEYS:
            return f"FLE1 placeholder keys {sorted(keys)}"
        if keys["a"].kind != 0x10 or keys["a"].value not in (1, 2):
            return "FLE1 a is not int32 1 or 2"
        if "ki" in keys and (keys["ki"].kind != 0x05 or keys["ki"].subtype != 4 or len(keys["ki"].value) != 16):
            return "FLE1 ki is not a UUID"
        if "ka" in keys and keys["ka"].kind != 0x02:
            return "FLE1 ka is not a string"
        return None
    if payload[0] == 3:
        if not FLE2_REQUIRED <= set(keys) or not set(keys) <= FLE2_REQUIRED | {"s"}:
            return f"FLE2 placeholder keys {sorted(keys)}"
        if keys["t"].kind != 0x10 or keys["t"].value not in (1, 2):
            return "FLE2 t is not int32 1 or 2"
        if keys["a"].kind != 0x10 or keys["a"].value not in (1, 2, 3, 4):
            return "FLE2 a is not int32 1..4"
        for name in ("ki", "ku"):
            if keys[name].kind != 0x05 or keys[name].subtype != 4 or len(keys[name].value) != 16:
                return f"FLE2 {name} is not a UUID"
        if keys["cm"].kind != 0x12 or ("s" in keys and keys["s"].kind != 0x12):
            return "FLE2 cm/s is not int64"
        return None
    return f"placeholder byte 0 is {payload[0]}"


def placeholder_secrets(payloads: Iterable[bytes]) -> set[int]:
    found: set[int] = set()
    for payload in payloads:
        try:
            inner = rawbson.walk(payload, 1)
            for element in inner:
                found.update(_serials(element))
        except (rawbson.BSONError, ValueError, IndexError):
            continue
    return found


def _top(data: bytes) -> dict[str, rawbson.Element]:
    top: dict[str, rawbson.Element] = {}
    for element in rawbson.walk(data):
        if len(element.path) == 1:
            top.setdefault(element.key, element)
    return top


def judge(command: bytes, reply: bytes | None, *, duplicates: Iterable[str] = ()) -> list[Verdict]:
    """Verdicts about `reply` (raw BSON; None when the connection dropped) to `command` (raw BSON)."""
    if reply is None:
        return [Verdict(CRASH, detail="connection dropped")]
    sent = command_secrets(command)
    top = _top(reply)
    ok = top.get("ok")
    if ok is None or not ok.value:
        code = top.get("code")
        if code is not None and code.value == 1:
            return [Verdict(CRASH, detail="InternalError")]
        message = top.get("errmsg")
        if code is None or code.kind != 0x10 or message is None or message.kind != 0x02:
            return [Verdict(MALFORMED, detail="error reply without int code and string errmsg")]
        quoted = set(secrets.in_text(message.value)) | (scan(reply).plaintext & sent)
        return [Verdict(ERRMSG, tuple(sorted(quoted)), "errmsg quotes a value")] if quoted else []
    verdicts: list[Verdict] = []
    flags = {name: top.get(name) for name in ("hasEncryptionPlaceholders", "schemaRequiresEncryption")}
    result = rawbson.sub_document(reply, "result")
    if result is None or any(f is None or f.kind != 0x08 for f in flags.values()):
        return [Verdict(MALFORMED, detail="accepted reply without boolean flags and a result document")]
    if sent and not flags["schemaRequiresEncryption"].value:
        verdicts.append(Verdict(FLAG, tuple(sorted(sent)),
                                "schemaRequiresEncryption false: the original command is sent"))
    elif sent and not flags["hasEncryptionPlaceholders"].value:
        verdicts.append(Verdict(FLAG_HEP, tuple(sorted(sent)),
                                "hasEncryptionPlaceholders false with secrets in the command"))
    found = scan(result)
    if found.plaintext:
        verdicts.append(Verdict(LEAK, tuple(sorted(found.plaintext)),
                                "; ".join(f"{s}@{found.where[s]}" for s in sorted(found.plaintext))))
    # The rest of the reply envelope must not carry secrets either.
    outside = scan(reply).plaintext - found.plaintext
    if outside:
        verdicts.append(Verdict(LEAK, tuple(sorted(outside)), "secret in the reply envelope"))
    for payload in found.placeholders:
        problem = placeholder_problem(payload)
        if problem:
            verdicts.append(Verdict(MALFORMED, detail=problem))
    duplicates = list(duplicates)
    if duplicates:
        verdicts.append(Verdict(DUPLICATE, tuple(sorted(sent)), ", ".join(duplicates)))
    dropped = sent - found.plaintext - placeholder_secrets(found.placeholders)
    if dropped:
        verdicts.append(Verdict(DROPPED, tuple(sorted(dropped)), "in no placeholder"))
    return verdicts
