"""encryptedFields -> an immutable, validated tree that answers "what is at this path?".

Parsed once per distinct `encryptionInformation` (cached by its bytes). Validation follows
the server's encryptedFields rules (types per index kind, range min/max/precision/sparsity/trimFactor,
text-search lengths and flags), with mongocryptd's codes from `errors.ERRORS`.
"""

from __future__ import annotations

import datetime
import decimal
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bson import Decimal128, Int64
from bson.binary import Binary
from bson.datetime_ms import DatetimeMS

from markd import bsonvalues
from markd.analysis import paths
from markd.analysis.qe.errors import error
from markd.analysis.schema import EMPTY, Encryption, Schema, SchemaNode, leaf, node
from markd.cache import ByteLRU

UNINDEXED, EQUALITY, RANGE, TEXT = 1, 2, 3, 4

TEXT_QUERY_TYPES = ("prefix", "suffix", "substring")
ALGORITHM_OF_QUERY_TYPE = {"equality": EQUALITY, "range": RANGE, "prefix": TEXT, "suffix": TEXT, "substring": TEXT}
# Names a query type is also given by: the server's earlier (preview) spellings, still parsed by mongocryptd
# and libmongocrypt as the same index; messages keep the name the rules used.
QUERY_TYPE_ALIASES = {
    "rangePreview": "range", "prefixPreview": "prefix", "suffixPreview": "suffix", "substringPreview": "substring",
}

# Types each kind of field can hold (server: isFLE2{Unindexed,EqualityIndexed,RangeIndexed}SupportedType).
UNINDEXED_TYPES = frozenset({
    "bool", "string", "binData", "objectId", "date", "regex", "dbPointer", "javascript", "symbol",
    "javascriptWithScope", "int", "timestamp", "long", "double", "decimal", "object", "array",
})
EQUALITY_TYPES = frozenset({
    "bool", "string", "binData", "objectId", "date", "regex", "dbPointer", "javascript", "symbol", "int",
    "timestamp", "long",
})
RANGE_TYPES = frozenset({"int", "long", "double", "decimal", "date"})
TEXT_TYPES = frozenset({"string"})

# The server fills absent range min/max with the whole domain of the type (setRangeDefaults).
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
DECIMAL_MIN = Decimal128("-9.999999999999999999999999999999999E+6144")
DECIMAL_MAX = Decimal128("9.999999999999999999999999999999999E+6144")
DEFAULT_SPARSITY = 2
# Contention when a query config omits it (encryptedFields IDL default since 7.0).
DEFAULT_CONTENTION = 8

_EPOCH = datetime.datetime(1970, 1, 1)

RANGE_ONLY_OPTIONS = ("min", "max", "sparsity", "precision", "trimFactor")
TEXT_ONLY_OPTIONS = ("strMaxLength", "strMinQueryLength", "strMaxQueryLength", "caseSensitive", "diacriticSensitive")
KNOWN_QUERY_OPTIONS = frozenset({"queryType", "contention", *RANGE_ONLY_OPTIONS, *TEXT_ONLY_OPTIONS})


def default_min(bson_type: str) -> Any:
    return {
        "int": INT32_MIN, "long": Int64(INT64_MIN), "double": -1.7976931348623157e308, "decimal": DECIMAL_MIN,
        "date": DatetimeMS(INT64_MIN),
    }[bson_type]


def default_max(bson_type: str) -> Any:
    return {
        "int": INT32_MAX, "long": Int64(INT64_MAX), "double": 1.7976931348623157e308, "decimal": DECIMAL_MAX,
        "date": DatetimeMS(INT64_MAX),
    }[bson_type]


def numeric(value: Any) -> decimal.Decimal | float | int:
    """A range value as a Python number that orders like the server does (dates as milliseconds)."""
    if isinstance(value, bool):
        raise TypeError("bool is not a range value")
    if isinstance(value, Decimal128):
        return value.to_decimal()
    if isinstance(value, DatetimeMS):
        return int(value)
    if isinstance(value, datetime.datetime):
        return (value.replace(tzinfo=None) - _EPOCH) // datetime.timedelta(milliseconds=1)
    if isinstance(value, (int, float)):
        return value
    raise TypeError(f"{type(value).__name__} is not a range value")


def is_nan(value: Any) -> bool:
    if isinstance(value, float):
        return math.isnan(value)
    if isinstance(value, Decimal128):
        return value.to_decimal().is_nan()
    return False


Bound = tuple[Any, bool]  # (value, included)


def tighter_lower(current: Bound | None, candidate: Bound) -> Bound:
    """The stricter of two lower bounds (an excluded bound beats an included one at the same value)."""
    if current is None:
        return candidate
    a, b = numeric(current[0]), numeric(candidate[0])
    if b > a or (b == a and not candidate[1]):
        return candidate
    return current


def tighter_upper(current: Bound | None, candidate: Bound) -> Bound:
    """The stricter of two upper bounds."""
    if current is None:
        return candidate
    a, b = numeric(current[0]), numeric(candidate[0])
    if b < a or (b == a and not candidate[1]):
        return candidate
    return current


@dataclass(frozen=True, slots=True)
class QueryConfig:
    """One entry of a field's `queries`, with the server's range defaults filled in."""

    query_type: str
    contention: int
    min: Any = None
    max: Any = None
    sparsity: int | None = None
    precision: int | None = None
    trim_factor: int | None = None
    case_sensitive: bool | None = None
    diacritic_sensitive: bool | None = None
    str_min_query_length: int | None = None
    str_max_query_length: int | None = None
    str_max_length: int | None = None


@dataclass(frozen=True, slots=True)
class EncryptedField(Encryption):
    """One encryptedFields entry: a FLE2 field (its ciphertexts are randomized, whatever its queries)."""

    path: str
    key_id: Binary
    bson_type: str | None
    queries: tuple[QueryConfig, ...]

    @property
    def randomized(self) -> bool:
        return True

    @property
    def types(self) -> frozenset[str]:
        return frozenset({self.bson_type}) if self.bson_type else frozenset()

    @property
    def algorithm(self) -> int:
        return ALGORITHM_OF_QUERY_TYPE[self.queries[0].query_type] if self.queries else UNINDEXED

    @property
    def contention(self) -> int:
        # mongocryptd uses the first query config's contention; unindexed fields have none.
        return self.queries[0].contention if self.queries else 0

    def query(self, query_type: str) -> QueryConfig | None:
        return next((q for q in self.queries if q.query_type == query_type), None)

    @property
    def range(self) -> QueryConfig:
        config = self.query("range")
        assert config is not None, "range config asked of a non-range field"
        return config


def build_tree(fields: tuple[EncryptedField, ...]) -> SchemaNode:
    """The schema tree of a namespace's encrypted fields, built as mongocryptd adds them one by one."""
    root = EMPTY
    for field in fields:
        root = _add(root, paths.split(field.path), field)
    return root


def _add(current: SchemaNode, parts: tuple[str, ...], field: EncryptedField) -> SchemaNode:
    if current.encrypted is not None:
        raise error("ADD_BELOW_ENCRYPTED")
    head = parts[0]
    existing = current.properties.get(head)
    if len(parts) == 1:
        if existing is not None and existing.may_hold_encryption:
            raise error("ENCRYPTED_PREFIX_OF_ENCRYPTED")
        replacement = leaf(field)
    else:
        replacement = _add(existing if existing is not None else EMPTY, parts[1:], field)
    return node(None, {**current.properties, head: replacement})


# ---------------------------------------------------------------------------------------------- parsing


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_option(raw: Mapping[str, Any], name: str, path: str) -> int | None:
    if name not in raw:
        return None
    value = raw[name]
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not _is_int(value):
        raise error("BAD_FIELD", detail=f"'{name}' of encrypted field '{path}' must be an integer")
    return int(value)


def _bool_option(raw: Mapping[str, Any], name: str, path: str) -> bool | None:
    if name not in raw:
        return None
    if not isinstance(raw[name], bool):
        raise error("BAD_FIELD", detail=f"'{name}' of encrypted field '{path}' must be a boolean")
    return raw[name]


def _refuse_present(raw: Mapping[str, Any], options: tuple[str, ...], index: str) -> None:
    for option in options:
        if option in raw:
            raise error(f"NOT_ALLOWED:{index}:{option}")


def _parse_query(raw: Any, path: str, bson_type: str | None) -> QueryConfig:
    if not isinstance(raw, Mapping):
        raise error("BAD_FIELD", detail=f"'queries' of encrypted field '{path}' must be an object or an array")
    name = raw.get("queryType")
    if type(name) is not str:
        raise error("BAD_FIELD", detail=f"'queryType' of encrypted field '{path}' must be a string")
    query_type = QUERY_TYPE_ALIASES.get(name, name)
    if query_type not in ALGORITHM_OF_QUERY_TYPE:
        raise error("UNKNOWN_QUERY_TYPE", name=name)
    unknown = set(raw) - KNOWN_QUERY_OPTIONS
    if unknown:
        raise error("BAD_FIELD", detail=f"BSON field 'queries.{sorted(unknown)[0]}' is an unknown field.")
    contention = _int_option(raw, "contention", path)
    if contention is None:
        contention = DEFAULT_CONTENTION
    if contention < 0:
        raise error("CONTENTION_NEGATIVE")
    if query_type == "equality":
        # validateEqualityIndex: the type, then each option that only another index takes.
        if bson_type not in EQUALITY_TYPES:
            raise error("EQUALITY_TYPE", type=bson_type)
        _refuse_present(raw, ("sparsity", "min", "max", "trimFactor", "precision", *TEXT_ONLY_OPTIONS), "equality")
        return QueryConfig("equality", contention)
    if query_type == "range":
        return _parse_range(raw, path, bson_type, contention, preview=name != query_type)
    return _parse_text(raw, path, bson_type, query_type, name, contention)


def _parse_range(raw: Mapping[str, Any], path: str, bson_type: str | None, contention: int,
                 preview: bool) -> QueryConfig:
    # validateRangeIndex's order: type, text-only options, sparsity, bounds' types, min < max, precision.
    if bson_type not in RANGE_TYPES:
        raise error("RANGE_TYPE", type=bson_type)
    _refuse_present(raw, TEXT_ONLY_OPTIONS, "range")
    sparsity = _int_option(raw, "sparsity", path)
    if sparsity is not None and not 1 <= sparsity <= 8:
        raise error("SPARSITY_RANGE")
    precision = _int_option(raw, "precision", path)
    trim_factor = _int_option(raw, "trimFactor", path)
    floating = bson_type in ("double", "decimal")
    bounds = []
    for name, key in (("min", "MIN_TYPE"), ("max", "MAX_TYPE")):
        if name in raw:
            value = raw[name]
            value_type = bsonvalues.bson_type(value)
            if value_type != bson_type:
                raise error(key, type=bson_type, value_type=value_type)
            if is_nan(value):
                raise error("BAD_FIELD", detail=f"'{name}' of encrypted field '{path}' cannot be NaN")
            bounds.append(value)
        else:
            bounds.append(default_min(bson_type) if name == "min" else default_max(bson_type))
    low, high = bounds
    if numeric(low) >= numeric(high):
        raise error("MIN_LT_MAX")
    if precision is not None and not floating:
        raise error("PRECISION_NOT_ALLOWED")
    if floating and (precision is not None or "min" in raw or "max" in raw):
        if precision is None or "min" not in raw or "max" not in raw:
            raise error("PRECISION_TOGETHER")
    if precision is not None and precision < 0:
        raise error("BAD_FIELD", detail=f"'precision' of encrypted field '{path}' must be non-negative")
    bits = None
    if precision is not None:
        bits = _precision_bits(bson_type, low, high, precision, path, check_domain=not preview)
    if trim_factor is not None:
        if bits is None:
            bits = _domain_bits(bson_type, low, high)
        if trim_factor < 0 or trim_factor >= max(bits, 1):
            raise error("TRIM_FACTOR", bits=bits)
    return QueryConfig(
        "range", contention, min=low, max=high,
        sparsity=DEFAULT_SPARSITY if sparsity is None else sparsity,
        precision=precision, trim_factor=trim_factor,
    )


def _domain_bits(bson_type: str, low: Any, high: Any) -> int:
    """Bits for every value of [low, high] without precision (libmongocrypt's mc_getNumberOfBits)."""
    if bson_type in ("int", "long", "date"):
        return (int(numeric(high)) - int(numeric(low))).bit_length()
    return 64 if bson_type == "double" else 128


def _ceil_log2(value: int) -> int:
    return (value - 1).bit_length()


def _precision_bits(bson_type: str, low: Any, high: Any, precision: int, path: str, check_domain: bool) -> int:
    """The bits of a floating-point domain in precision mode, after the server's digit and domain checks
    (6966805-6966808, 9157100/9157101); arithmetic as libmongocrypt's mc_canUsePrecisionMode* does it."""
    if bson_type == "double":
        scale = 10.0 ** precision if precision <= 308 else math.inf
        scaled = [float(numeric(low)) * scale, float(numeric(high)) * scale]
        for value, key in zip(scaled, ("PRECISION_MIN_DIGITS_DOUBLE", "PRECISION_MAX_DIGITS_DOUBLE"), strict=True):
            if math.isfinite(value) and value != math.trunc(value):
                raise error(key, path=path)
        bound, limit, domain_key = 2.0 ** 53, 53, "PRECISION_DOMAIN_DOUBLE"
        fits = all(math.isfinite(v) and abs(v) < bound for v in scaled)
        if fits:
            headroom = float(2**64 - 1) - (scaled[1] - scaled[0])
            fits = headroom > 0 and precision <= math.floor(math.log10(headroom)) - 1
        integers = [int(v) for v in scaled] if fits else [0, 0]
    else:
        context = decimal.Context(prec=34, rounding=decimal.ROUND_HALF_EVEN)
        scaled_dec = [context.scaleb(numeric(low), precision), context.scaleb(numeric(high), precision)]
        for value, key in zip(scaled_dec, ("PRECISION_MIN_DIGITS_DECIMAL", "PRECISION_MAX_DIGITS_DECIMAL"),
                              strict=True):
            if value.is_finite() and value != value.to_integral_value(rounding=decimal.ROUND_DOWN):
                raise error(key, path=path)
        limit, domain_key = 128, "PRECISION_DOMAIN_DECIMAL"
        fits = all(v.is_finite() and abs(v) <= 2**127 - 1 for v in scaled_dec)
        if fits:
            headroom = decimal.Decimal(2**128 - 1) - (scaled_dec[1] - scaled_dec[0])
            fits = headroom > 0 and precision <= int(headroom.log10(context)) - 1 and precision <= 255
        integers = [int(v) for v in scaled_dec] if fits else [0, 0]
    bits = _ceil_log2(integers[1] - integers[0] + 10 ** precision) if fits else limit
    if bits >= limit:
        if check_domain:
            raise error(domain_key, path=path)
        return 64 if bson_type == "double" else 128
    return bits


def _parse_text(raw: Mapping[str, Any], path: str, bson_type: str | None, query_type: str, name: str,
                contention: int) -> QueryConfig:
    # validateTextSearchIndex's order: type, range-only options, each parameter, then their relations.
    if bson_type not in TEXT_TYPES:
        raise error("TEXT_TYPE", type=bson_type, path=path)
    _refuse_present(raw, ("sparsity", "min", "max", "trimFactor", "precision"), "text-based")
    for option in ("strMinQueryLength", "strMaxQueryLength", "caseSensitive", "diacriticSensitive"):
        if option not in raw:
            raise error(f"TEXT_REQUIRED:{option}", query_type=name, path=path)
    low = _int_option(raw, "strMinQueryLength", path)
    high = _int_option(raw, "strMaxQueryLength", path)
    assert low is not None and high is not None
    if low <= 0 or high <= 0:
        raise error("BAD_FIELD", detail=f"text search lengths of encrypted field '{path}' must be positive")
    if low > high:
        raise error("TEXT_MIN_GT_MAX")
    length = None
    if query_type == "substring":
        if "strMaxLength" not in raw:
            raise error("TEXT_REQUIRED:strMaxLength", query_type=name, path=path)
        length = _int_option(raw, "strMaxLength", path)
        assert length is not None
        if length <= 0:
            raise error("BAD_FIELD", detail=f"text search lengths of encrypted field '{path}' must be positive")
        if high > length:
            raise error("TEXT_MAX_GT_LENGTH")
    return QueryConfig(
        query_type, contention,
        case_sensitive=_bool_option(raw, "caseSensitive", path),
        diacritic_sensitive=_bool_option(raw, "diacriticSensitive", path),
        str_min_query_length=low, str_max_query_length=high, str_max_length=length,
    )


def _parse_field(raw: Any) -> EncryptedField:
    if not isinstance(raw, Mapping):
        raise error("BAD_FIELD", detail="each entry of encryptedFields.fields must be an object")
    path = raw.get("path")
    if type(path) is not str:
        raise error("BAD_FIELD", detail="BSON field 'fields.path' is missing but a required field")
    if not path:
        raise error("EMPTY_PATH")
    if path == "_id" or path.startswith("_id."):
        raise error("ENCRYPT_ID")
    if any(not part or part.startswith("$") for part in path.split(".")):
        raise error("BAD_FIELD", detail=f"Invalid encrypted field path '{path}'")
    key_id = raw.get("keyId")
    if not isinstance(key_id, Binary) or key_id.subtype != 4 or len(key_id) != 16:
        # keyAltName strings were translated by libmongocrypt before the command reached markd.
        raise error("BAD_FIELD", detail=f"keyId of encrypted field '{path}' must be a UUID")
    bson_type = raw.get("bsonType")
    if bson_type is not None and type(bson_type) is not str:
        raise error("BAD_FIELD", detail=f"bsonType of encrypted field '{path}' must be a string")
    unknown = set(raw) - {"path", "keyId", "bsonType", "queries"}
    if unknown:
        raise error("BAD_FIELD", detail=f"BSON field 'fields.{sorted(unknown)[0]}' is an unknown field.")
    raw_queries = raw.get("queries")
    if raw_queries is None:
        queries: tuple[QueryConfig, ...] = ()
        if bson_type is not None and bson_type not in UNINDEXED_TYPES:
            raise error("UNINDEXED_TYPE", type=bson_type)
    else:
        if bson_type is None:
            raise error("NEEDS_BSON_TYPE")
        listed = list(raw_queries) if isinstance(raw_queries, list) else [raw_queries]
        queries = tuple(_parse_query(q, path, bson_type) for q in listed)
        _check_combination(queries, path)
    return EncryptedField(path, Binary(bytes(key_id), 4), bson_type, queries)


def _check_combination(queries: tuple[QueryConfig, ...], path: str) -> None:
    if not queries:
        raise error("TEXT_NO_QUERIES")
    if len(queries) == 1:
        return
    if len(queries) > 2:
        raise error("TEXT_TOO_MANY")
    if sorted(q.query_type for q in queries) != ["prefix", "suffix"]:
        raise error("TEXT_COMBINATION")
    first, second = queries
    for option, attribute in (("caseSensitive", "case_sensitive"), ("diacriticSensitive", "diacritic_sensitive"),
                              ("contention", "contention")):
        if getattr(first, attribute) != getattr(second, attribute):
            raise error(f"TEXT_SAME:{option}", path=path)


def parse_encrypted_fields(raw: Any) -> Schema:
    """One namespace's encryptedFields, checked as mongocryptd checks them, as a schema tree."""
    if not isinstance(raw, Mapping):
        raise error("SCHEMA_NOT_OBJECT")
    raw_fields = raw.get("fields", [])
    if not isinstance(raw_fields, list):
        raise error("BAD_FIELD", detail="encryptedFields.fields must be an array")
    return Schema(build_tree(tuple(_parse_field(f) for f in raw_fields)))


@dataclass(frozen=True, slots=True)
class EncryptionInformation:
    """`encryptionInformation.schema`: encryptedFields per namespace."""

    schemas: Mapping[str, Schema]

    def for_namespace(self, namespace: str) -> Schema:
        found = self.schemas.get(namespace)
        if found is None:
            if len(self.schemas) == 1:
                raise error("NAMESPACE_MISMATCH", given=next(iter(self.schemas)), expected=namespace)
            raise error("MISSING_SCHEMA", namespace=namespace)
        return found


# Parsed encryptionInformation by its bytes, bounded by entries and bytes (--schemaCacheMB).
_CACHE: ByteLRU[bytes, EncryptionInformation] = ByteLRU()
PARSED_COST = 4


def _parse(encoded: bytes) -> EncryptionInformation:
    raw = bsonvalues.decode(encoded)
    if not isinstance(raw, Mapping):
        raise error("INFO_NOT_OBJECT")
    kind = raw.get("type", 1)
    if kind != 1:
        raise error("BAD_TYPE_FIELD")
    schema = raw.get("schema")
    if not isinstance(schema, Mapping):
        raise error("SCHEMA_TYPE")
    if not schema:
        raise error("ONE_NAMESPACE")
    return EncryptionInformation({ns: parse_encrypted_fields(value) for ns, value in schema.items()})


def parse_encryption_information(raw: Any) -> EncryptionInformation:
    """Parse (or fetch from the cache) a command's encryptionInformation."""
    if not isinstance(raw, Mapping):
        raise error("INFO_NOT_OBJECT")
    if bsonvalues.has_duplicates(raw):
        # Checked before the cache: a document re-encoded for its key has lost its repeated name.
        _refuse_duplicates(raw)
    # From a request (an ExactDocument): keyed by the bytes the client sent, hashed once per distinct value.
    encoded = raw.raw if type(raw) is bsonvalues.ExactDocument else bsonvalues.encode(raw)
    parsed = _CACHE.get(encoded)
    if parsed is None:
        parsed = _parse(encoded)
        _CACHE.put(encoded, parsed, PARSED_COST * len(encoded))
    return parsed


def cache_stats() -> tuple[int, int]:
    return _CACHE.hits, _CACHE.misses


def _refuse_duplicates(information: Mapping[str, Any]) -> None:
    """A name given twice in encryptionInformation is refused (the IDL's duplicate-field error), never read
    last-wins; a namespace given twice is two namespaces where one is expected (6327503)."""

    def check(value: Any, context: str) -> None:
        repeated = getattr(value, "duplicates", ())
        if repeated:
            raise error("DUPLICATE_FIELD", field=f"{context}.{repeated[0]}")

    check(information, "EncryptInformation")
    schema = information.get("schema")
    if not isinstance(schema, Mapping):
        return
    if getattr(schema, "duplicates", ()):
        raise error("ONE_NAMESPACE")
    for config in schema.values():
        if not isinstance(config, Mapping):
            continue
        check(config, "EncryptedFieldConfig")
        fields = config.get("fields")
        for field in fields if isinstance(fields, list) else ():
            check(field, "EncryptedFieldConfig.fields")
            queries = field.get("queries") if isinstance(field, Mapping) else None
            for query in queries if isinstance(queries, list) else [queries]:
                check(query, "EncryptedFieldConfig.fields.queries")
    repeated = bsonvalues.first_duplicate(information, "EncryptInformation")
    if repeated is not None:
        raise error("DUPLICATE_FIELD", field=repeated)
