"""The grammar's vocabulary: every command field, stage, expression, accumulator, query and update operator.

Written for this package from the MongoDB 8.x manual's operator lists and mongod's command parameters
(facts, not markd's tables: nothing here is imported from markd).  Templates use three markers the
generator fills in: `X` (an expression: where a reference to an encrypted field goes), `V` (a value: where
a secret goes when the template is tied to an encrypted field) and `P` (a field path, without `$`).
"""

from __future__ import annotations

import datetime
from typing import Any

from bson import Code, Int64, Regex


class Marker:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


X = Marker("X")  # an expression
V = Marker("V")  # a value
P = Marker("P")  # a path (no "$")
PATH_KEY = "<path>"  # a document key that stands for P

DATE = datetime.datetime(2001, 2, 3, 4, 5, 6)

# ------------------------------------------------------------------------------------------------
# Commands: every field mongod accepts, and its role
# ------------------------------------------------------------------------------------------------

# Roles the generator knows how to fill:
#   filter, projection, sort, hint, bounds (min/max), let, pipeline, cursor, collation, documents,
#   updates, deletes, update (findAndModify), arrayFilters, fields (findAndModify projection),
#   key (distinct), bool, int, long, string, doc (an opaque options document), readConcern,
#   writeConcern, comment, indexes, validator, timeseries, explain (the explained command), ops, nsInfo.
GENERIC_FIELDS: dict[str, str] = {
    "comment": "comment",
    "maxTimeMS": "int",
    "readConcern": "readConcern",
    "writeConcern": "writeConcern",
    "lsid": "lsid",
    "txnNumber": "long",
    "autocommit": "bool",
    "startTransaction": "bool",
    "$readPreference": "readPreference",
    "$clusterTime": "doc",
    "apiVersion": "apiVersion",
    "apiStrict": "bool",
    "apiDeprecationErrors": "bool",
    "mayBypassWriteBlocking": "bool",
    "rawData": "bool",
}

COMMAND_FIELDS: dict[str, dict[str, str]] = {
    "find": {
        "filter": "filter", "projection": "projection", "sort": "sort", "hint": "hint", "skip": "int",
        "limit": "int", "batchSize": "int", "singleBatch": "bool", "max": "bounds", "min": "bounds",
        "returnKey": "bool", "showRecordId": "bool", "tailable": "bool", "oplogReplay": "bool",
        "noCursorTimeout": "bool", "awaitData": "bool", "allowPartialResults": "bool", "collation": "collation",
        "allowDiskUse": "bool", "let": "let", "readOnce": "bool", "includeQueryStatsMetrics": "bool",
        "ntoreturn": "int", "term": "long",
    },
    "aggregate": {
        "pipeline": "pipeline", "explain": "bool", "allowDiskUse": "bool", "cursor": "cursor",
        "bypassDocumentValidation": "bool", "collation": "collation", "hint": "hint", "let": "let",
        "includeQueryStatsMetrics": "bool",
    },
    "count": {
        "query": "filter", "limit": "int", "skip": "int", "hint": "hint", "collation": "collation",
        "fields": "doc", "mirrored": "bool",
    },
    "distinct": {"key": "key", "query": "filter", "collation": "collation", "hint": "hint", "mirrored": "bool"},
    "delete": {"deletes": "deletes", "ordered": "bool", "let": "let", "bypassDocumentValidation": "bool"},
    "update": {"updates": "updates", "ordered": "bool", "let": "let", "bypassDocumentValidation": "bool"},
    "findAndModify": {
        "query": "filter", "sort": "sort", "remove": "bool", "update": "update", "new": "bool",
        "fields": "fields", "upsert": "bool", "bypassDocumentValidation": "bool", "collation": "collation",
        "arrayFilters": "arrayFilters", "hint": "hint", "let": "let",
    },
    "insert": {"documents": "documents", "ordered": "bool", "bypassDocumentValidation": "bool"},
    "create": {
        "capped": "bool", "size": "int", "max": "int", "validator": "validator", "validationLevel": "validationLevel",
        "validationAction": "validationAction", "viewOn": "string", "pipeline": "pipeline", "collation": "collation",
        "timeseries": "timeseries", "clusteredIndex": "doc", "changeStreamPreAndPostImages": "doc",
        "storageEngine": "doc", "indexOptionDefaults": "doc", "expireAfterSeconds": "long", "idIndex": "doc",
        "autoIndexId": "bool", "encryptedFields": "encryptedFields",
    },
    "createIndexes": {"indexes": "indexes", "commitQuorum": "string", "isTimeseriesNamespace": "bool"},
    "collMod": {
        "validator": "validator", "validationLevel": "validationLevel", "validationAction": "validationAction",
        "index": "doc", "viewOn": "string", "pipeline": "pipeline", "expireAfterSeconds": "long",
        "changeStreamPreAndPostImages": "doc", "timeseries": "doc", "cappedSize": "long", "cappedMax": "long",
        "dryRun": "bool",
    },
    "explain": {"explain": "explain", "verbosity": "verbosity"},
    "bulkWrite": {
        "ops": "ops", "nsInfo": "nsInfo", "ordered": "bool", "bypassDocumentValidation": "bool", "let": "let",
        "errorsOnly": "bool", "cursor": "cursor",
    },
}
COMMAND_FIELDS["findandmodify"] = COMMAND_FIELDS["findAndModify"]

# The commands explain takes (libmongocrypt marks each).
EXPLAINABLE = ("find", "aggregate", "count", "distinct", "delete", "update", "findAndModify", "findandmodify")

UPDATE_STATEMENT_FIELDS = {
    "q": "filter", "u": "update", "c": "constants", "upsert": "bool", "multi": "bool", "arrayFilters": "arrayFilters",
    "collation": "collation", "hint": "hint", "sort": "sort", "upsertSupplied": "bool",
}
DELETE_STATEMENT_FIELDS = {"q": "filter", "limit": "deleteLimit", "collation": "collation", "hint": "hint"}

# ------------------------------------------------------------------------------------------------
# Aggregation expression operators: argument shapes (X marks an expression argument)
# ------------------------------------------------------------------------------------------------

EXPRESSIONS: dict[str, Any] = {
    # arithmetic
    "$abs": X, "$add": [X, 1], "$ceil": X, "$divide": [X, 2], "$exp": X, "$floor": X, "$ln": X, "$log": [X, 10],
    "$log10": X, "$mod": [X, 7], "$multiply": [X, 3], "$pow": [X, 2], "$round": [X, 1], "$sigmoid": X,
    "$sqrt": X, "$subtract": [X, 1], "$trunc": [X, 0],
    # array
    "$arrayElemAt": [[X], 0], "$arrayToObject": [[["k", X]]], "$concatArrays": [[X], [1]],
    "$filter": {"input": [X], "as": "elem", "cond": True, "limit": 1}, "$first": [[X]],
    "$firstN": {"input": [X], "n": 1}, "$in": [X, [1, 2]], "$indexOfArray": [[X], 1], "$isArray": [X],
    "$last": [[X]], "$lastN": {"input": [X], "n": 1}, "$map": {"input": [X], "as": "elem", "in": "$$elem"},
    "$maxN": {"input": [X], "n": 1}, "$minN": {"input": [X], "n": 1}, "$objectToArray": {"k": X},
    "$range": [0, X, 1], "$reduce": {"input": [X], "initialValue": 0, "in": "$$this"},
    "$reverseArray": [[X]], "$size": [[X]], "$slice": [[X], 1], "$sortArray": {"input": [X], "sortBy": 1},
    "$zip": {"inputs": [[X], [1]]},
    # bitwise
    "$bitAnd": [X, 1], "$bitNot": X, "$bitOr": [X, 1], "$bitXor": [X, 1],
    # boolean
    "$and": [X, True], "$not": [X], "$or": [X, False],
    # comparison
    "$cmp": [X, 1], "$eq": [X, 1], "$gt": [X, 1], "$gte": [X, 1], "$lt": [X, 1], "$lte": [X, 1], "$ne": [X, 1],
    # conditional
    "$cond": [True, X, X], "$ifNull": [X, 0], "$switch": {"branches": [{"case": True, "then": X}], "default": X},
    # custom
    "$function": {"body": Code("function(a) { return a; }"), "args": [X], "lang": "js"},
    # data size
    "$binarySize": X, "$bsonSize": {"k": X},
    # date
    "$dateAdd": {"startDate": X, "unit": "day", "amount": 1},
    "$dateDiff": {"startDate": X, "endDate": DATE, "unit": "day"},
    "$dateFromParts": {"year": X}, "$dateFromString": {"dateString": X},
    "$dateSubtract": {"startDate": X, "unit": "day", "amount": 1}, "$dateToParts": {"date": X},
    "$dateToString": {"date": X, "format": "%Y-%m-%d"}, "$dateTrunc": {"date": X, "unit": "day"},
    "$dayOfMonth": X, "$dayOfWeek": X, "$dayOfYear": X, "$hour": X, "$isoDayOfWeek": X, "$isoWeek": X,
    "$isoWeekYear": X, "$millisecond": X, "$minute": X, "$month": X, "$second": X, "$toDate": X, "$week": X,
    "$year": X,
    # accumulators as expressions
    "$avg": [X, 1], "$max": [X, 1], "$min": [X, 1], "$sum": [X, 1], "$stdDevPop": [X, 1], "$stdDevSamp": [X, 1],
    "$median": {"input": [X], "method": "approximate"},
    "$percentile": {"input": [X], "p": [0.5], "method": "approximate"},
    # literal
    "$literal": 1,
    # miscellaneous
    "$createObjectId": {}, "$getField": {"field": "k", "input": {"k": X}}, "$hash": {"input": X, "algorithm": "sha256"},
    "$hexHash": {"input": X, "algorithm": "sha256"}, "$rand": {}, "$sampleRate": 0.5, "$toHashedIndexKey": X,
    # object
    "$mergeObjects": [{"k": X}], "$setField": {"field": "k", "input": {}, "value": X},
    "$unsetField": {"field": "j", "input": {"k": X, "j": 1}},  # unset the other field: X stays in the result
    # set
    "$allElementsTrue": [[X]], "$anyElementTrue": [[X]], "$setDifference": [[X], [1]], "$setEquals": [[X], [1]],
    "$setIntersection": [[X], [1]], "$setIsSubset": [[X], [1]], "$setUnion": [[X], [1]],
    # string
    "$concat": [X, "-"], "$indexOfBytes": [X, "a"], "$indexOfCP": [X, "a"], "$ltrim": {"input": X},
    "$regexFind": {"input": X, "regex": "^a"}, "$regexFindAll": {"input": X, "regex": "^a"},
    "$regexMatch": {"input": X, "regex": "^a"}, "$replaceOne": {"input": X, "find": "a", "replacement": "b"},
    "$replaceAll": {"input": X, "find": "a", "replacement": "b"}, "$rtrim": {"input": X}, "$split": [X, "-"],
    "$strLenBytes": X, "$strLenCP": X, "$strcasecmp": [X, "a"], "$substr": [X, 0, 2], "$substrBytes": [X, 0, 2],
    "$substrCP": [X, 0, 2], "$toLower": X, "$toString": X, "$trim": {"input": X}, "$toUpper": X,
    # text, timestamp
    "$meta": "textScore", "$tsIncrement": X, "$tsSecond": X,
    # trigonometry
    "$sin": X, "$cos": X, "$tan": X, "$asin": X, "$acos": X, "$atan": X, "$atan2": [X, 1], "$asinh": X,
    "$acosh": X, "$atanh": X, "$sinh": X, "$cosh": X, "$tanh": X, "$degreesToRadians": X, "$radiansToDegrees": X,
    # type
    "$convert": {"input": X, "to": "string", "onError": 0, "onNull": 0}, "$isNumber": X, "$toArray": X,
    "$toBool": X, "$toDecimal": X, "$toDouble": X, "$toInt": X, "$toLong": X, "$toObject": X, "$toObjectId": X,
    "$type": X, "$toUUID": X,
    # variable
    "$let": {"vars": {"v": X}, "in": "$$v"},
    # vector similarity
    "$similarityCosine": [[X], [1]], "$similarityDotProduct": [[X], [1]], "$similarityEuclidean": [[X], [1]],
    # Queryable Encryption text search
    "$encStrContains": {"input": X, "substring": "ab"}, "$encStrEndsWith": {"input": X, "suffix": "ab"},
    "$encStrNormalizedEq": {"input": X, "string": "ab"}, "$encStrStartsWith": {"input": X, "prefix": "ab"},
}

# Comparison forms in which a secret V meets an expression X.
COMPARISONS: dict[str, Any] = {
    "$eq": [X, V], "$eq-swapped": [V, X], "$eq-object": [{"k": X}, {"k": V}], "$ne": [X, V], "$gt": [X, V],
    "$gte": [X, V], "$lt": [X, V], "$lte": [X, V],
    "$cmp": [X, V], "$in": [X, [V, "plain"]], "$setIsSubset": [[X], [V]], "$setEquals": [[X], [V]],
    "$setIntersection": [[X], [V]], "$indexOfArray": [[V], X], "$strcasecmp": [X, V],
    "$indexOfCP": [X, V], "$indexOfBytes": [X, V], "$split": [X, V], "$concat": [X, V],
    "$regexMatch": {"input": X, "regex": V}, "$replaceAll": {"input": X, "find": V, "replacement": "b"},
    "$max": [X, V], "$min": [X, V], "$ifNull": [X, V], "$switch": {"branches": [{"case": {"$eq": [X, V]}, "then": 1}],
                                                                  "default": 0},
    "$cond": {"if": {"$eq": [X, V]}, "then": 1, "else": 0}, "$and": [{"$eq": [X, V]}, True],
    "$or": [{"$eq": [X, V]}, False], "$not": [{"$ne": [X, V]}],
}
TEXT_SEARCH = {"$encStrStartsWith": "prefix", "$encStrEndsWith": "suffix", "$encStrContains": "substring",
               "$encStrNormalizedEq": "string"}

SYSTEM_VARIABLES = ("$$NOW", "$$CLUSTER_TIME", "$$ROOT", "$$CURRENT", "$$REMOVE", "$$DESCEND", "$$PRUNE", "$$KEEP",
                    "$$SEARCH_META", "$$USER_ROLES")

# ------------------------------------------------------------------------------------------------
# Accumulators ($group, $bucket, $bucketAuto) and window operators ($setWindowFields)
# ------------------------------------------------------------------------------------------------

SORT_BY = {"name": 1}
ACCUMULATORS: dict[str, Any] = {
    "$accumulator": {"init": Code("function() { return null; }"), "accumulate": Code("function(s, v) { return v; }"),
                     "accumulateArgs": [X], "merge": Code("function(a, b) { return a; }"), "lang": "js"},
    "$addToSet": X, "$avg": X, "$bottom": {"output": X, "sortBy": SORT_BY},
    "$bottomN": {"output": X, "sortBy": SORT_BY, "n": 2}, "$concatArrays": [X], "$count": {}, "$first": X,
    "$firstN": {"input": X, "n": 2}, "$last": X, "$lastN": {"input": X, "n": 2}, "$max": X,
    "$maxN": {"input": X, "n": 2}, "$median": {"input": X, "method": "approximate"}, "$mergeObjects": {"k": X},
    "$min": X, "$minN": {"input": X, "n": 2}, "$percentile": {"input": X, "p": [0.5], "method": "approximate"},
    "$push": X, "$setUnion": [X], "$stdDevPop": X, "$stdDevSamp": X, "$sum": X,
    "$top": {"output": X, "sortBy": SORT_BY},
    "$topN": {"output": X, "sortBy": SORT_BY, "n": 2},
}
# The accumulators whose output holds the input values themselves (so a later match on it is a match on them).
VALUE_ACCUMULATORS = ("$addToSet", "$bottom", "$bottomN", "$first", "$firstN", "$last", "$lastN", "$max", "$maxN",
                      "$min", "$minN", "$push", "$top", "$topN", "$concatArrays", "$setUnion")
N_ACCUMULATORS = ("$top", "$bottom", "$topN", "$bottomN", "$firstN", "$lastN", "$maxN", "$minN")

WINDOW_OPERATORS: dict[str, Any] = {
    **{name: ACCUMULATORS[name] for name in ("$addToSet", "$avg", "$bottom", "$bottomN", "$count", "$first",
                                             "$last", "$max", "$min", "$minN", "$maxN", "$push", "$stdDevPop",
                                             "$stdDevSamp", "$sum", "$top", "$topN", "$firstN", "$lastN",
                                             "$median", "$percentile")},
    "$covariancePop": [X, 1], "$covarianceSamp": [X, 1], "$denseRank": {}, "$derivative": {"input": X, "unit": "day"},
    "$documentNumber": {}, "$expMovingAvg": {"input": X, "N": 2}, "$integral": {"input": X, "unit": "day"},
    "$linearFill": X, "$locf": X, "$minMaxScaler": {"input": X}, "$rank": {}, "$shift": {"output": X, "by": 1},
}
WINDOW_VALUE_OPERATORS = ("$addToSet", "$bottom", "$bottomN", "$first", "$last", "$max", "$min", "$minN", "$maxN",
                          "$push", "$top", "$topN", "$firstN", "$lastN", "$linearFill", "$locf", "$shift")
WINDOW_NEEDS_SORT = ("$denseRank", "$rank", "$documentNumber", "$derivative", "$expMovingAvg", "$integral",
                     "$linearFill", "$locf", "$shift", "$bottom", "$bottomN", "$top", "$topN")

# ------------------------------------------------------------------------------------------------
# Query (match) operators: V marks a value compared with the path
# ------------------------------------------------------------------------------------------------

QUERY_OPERATORS: dict[str, Any] = {
    "$eq": V, "$gt": V, "$gte": V, "$in": [V, "plain-in"], "$lt": V, "$lte": V, "$ne": V, "$nin": [V, "plain-nin"],
    "$not": {"$eq": V}, "$exists": True, "$type": "string", "$mod": [V, 0], "$regex": V, "$all": [V],
    "$elemMatch": {"$eq": V}, "$size": V, "$bitsAllClear": V, "$bitsAllSet": V, "$bitsAnyClear": V,
    "$bitsAnySet": V,
    "$geoIntersects": {"$geometry": {"type": "Point", "coordinates": [0, 0]}},
    "$geoWithin": {"$centerSphere": [[0, 0], 0.1]}, "$near": {"$geometry": {"type": "Point", "coordinates": [0, 0]},
                                                           "$maxDistance": 10, "$minDistance": 0},
    "$nearSphere": [0, 0],
}
GEO_SHAPES = ({"$box": [[0, 0], [1, 1]]}, {"$center": [[0, 0], 1]}, {"$centerSphere": [[0, 0], 0.1]},
              {"$polygon": [[0, 0], [1, 1], [1, 0]]},
              {"$geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 0]]]}})
# Operators whose V must be a number / string / the field's own type.
NUMERIC_VALUE = ("$mod", "$size", "$bitsAllClear", "$bitsAllSet", "$bitsAnyClear", "$bitsAnySet")
STRING_VALUE = ("$regex",)
TOP_LEVEL_QUERY = ("$and", "$or", "$nor", "$expr", "$jsonSchema", "$text", "$where", "$comment", "$sampleRate",
                   "$alwaysTrue", "$alwaysFalse")
PROJECTION_OPERATORS = ("$", "$elemMatch", "$slice", "$meta")

# ------------------------------------------------------------------------------------------------
# Update operators
# ------------------------------------------------------------------------------------------------

UPDATE_OPERATORS: dict[str, Any] = {
    "$set": V, "$setOnInsert": V, "$inc": V, "$mul": V, "$min": V, "$max": V, "$push": V, "$addToSet": V,
    "$pull": V, "$pullAll": [V], "$unset": "", "$rename": "renamed", "$currentDate": True, "$pop": 1,
    "$bit": {"and": V},
    "$push-each": {"$each": [V], "$position": 0, "$slice": 5, "$sort": 1}, "$addToSet-each": {"$each": [V]},
}
NUMERIC_UPDATE = ("$inc", "$mul", "$bit")
ARRAY_UPDATE_PATHS = ("tags.$", "tags.$[]", "tags.$[t]")

# ------------------------------------------------------------------------------------------------
# Stages: where each may stand and how it changes the fields that follow
# ------------------------------------------------------------------------------------------------

# position: any | first | last.  propagation: same | reshape | none (nothing of the input survives).
STAGES: dict[str, tuple[str, str]] = {
    "$addFields": ("any", "reshape"), "$bucket": ("any", "reshape"), "$bucketAuto": ("any", "reshape"),
    "$changeStream": ("first", "reshape"), "$changeStreamSplitLargeEvent": ("last", "same"),
    "$collStats": ("first", "none"), "$count": ("any", "none"), "$currentOp": ("first", "none"),
    "$densify": ("any", "same"), "$documents": ("first", "none"), "$facet": ("any", "reshape"),
    "$fill": ("any", "same"), "$geoNear": ("first", "same"), "$graphLookup": ("any", "reshape"),
    "$group": ("any", "reshape"), "$indexStats": ("first", "none"), "$limit": ("any", "same"),
    "$listClusterCatalog": ("first", "none"), "$listLocalSessions": ("first", "none"),
    "$listSampledQueries": ("first", "none"), "$listSearchIndexes": ("first", "none"),
    "$listSessions": ("first", "none"), "$lookup": ("any", "reshape"), "$match": ("any", "same"),
    "$merge": ("last", "same"), "$out": ("last", "same"), "$planCacheStats": ("first", "none"),
    "$project": ("any", "reshape"), "$querySettings": ("first", "none"), "$queryStats": ("first", "none"),
    "$rankFusion": ("first", "reshape"), "$redact": ("any", "same"), "$replaceRoot": ("any", "reshape"),
    "$replaceWith": ("any", "reshape"), "$sample": ("any", "same"), "$score": ("any", "same"),
    "$scoreFusion": ("first", "reshape"), "$search": ("first", "same"), "$searchMeta": ("first", "none"),
    "$set": ("any", "reshape"), "$setWindowFields": ("any", "reshape"), "$shardedDataDistribution": ("first", "none"),
    "$skip": ("any", "same"), "$sort": ("any", "same"), "$sortByCount": ("any", "reshape"),
    "$unionWith": ("any", "same"), "$unset": ("any", "reshape"), "$unwind": ("any", "same"),
    "$vectorSearch": ("first", "same"),
}

# System stages with no user value: their argument documents as written.
SYSTEM_STAGE_ARGS: dict[str, Any] = {
    "$collStats": {"latencyStats": {"histograms": True}, "count": {}}, "$currentOp": {"allUsers": False},
    "$indexStats": {}, "$listClusterCatalog": {}, "$listLocalSessions": {}, "$listSampledQueries": {},
    "$listSearchIndexes": {}, "$listSessions": {}, "$planCacheStats": {}, "$querySettings": {},
    "$queryStats": {}, "$shardedDataDistribution": {}, "$changeStreamSplitLargeEvent": {},
}

# ------------------------------------------------------------------------------------------------
# Atlas Search operators ($search, $searchMeta): P is the path, V the value
# ------------------------------------------------------------------------------------------------

SEARCH_OPERATORS: dict[str, Any] = {
    "text": {"query": V, "path": P}, "phrase": {"query": V, "path": P}, "autocomplete": {"query": V, "path": P},
    "equals": {"path": P, "value": V}, "in": {"path": P, "value": [V]}, "range": {"path": P, "gte": V},
    "regex": {"query": V, "path": P}, "wildcard": {"query": V, "path": P, "allowAnalyzedField": True},
    "queryString": {"defaultPath": P, "query": V}, "exists": {"path": P},
    "near": {"path": P, "origin": V, "pivot": 2}, "moreLikeThis": {"like": {PATH_KEY: V}},
    "compound": {"filter": [{"equals": {"path": P, "value": V}}]},
    "embeddedDocument": {"path": P, "operator": {"equals": {"path": P, "value": V}}},
    "span": {"first": {"operator": {"term": {"path": P, "query": V}}, "endPositionLte": 2}},
}

# ------------------------------------------------------------------------------------------------
# Fillers: values for options that never hold a user value
# ------------------------------------------------------------------------------------------------

COLLATIONS = ({"locale": "simple"}, {"locale": "en", "strength": 2}, {"locale": "fr", "caseLevel": True})
READ_CONCERNS = ({"level": "local"}, {"level": "majority"}, {"level": "snapshot", "atClusterTime": None})
WRITE_CONCERNS = ({"w": 1}, {"w": "majority", "wtimeout": 100}, {"w": 0})
PLAIN_VALUES: tuple[Any, ...] = ("plain", "x", 1, 2, 0, -1, 2.5, True, False, None, Int64(3), DATE, Regex("^p", "i"),
                                 [1, 2], {"p": 1}, "")
