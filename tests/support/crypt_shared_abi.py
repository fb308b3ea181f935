"""markd's mongo_crypt_v1 library called through its C ABI, as libmongocrypt calls it, in a child process.

A child because the ABI allows one `mongo_crypt_v1_lib` per process and libmongocrypt (pymongocrypt)
in the test process may hold it; and a crash would cost the child, not the test run.

    python -m tests.support.crypt_shared_abi LIBRARY MODE IN OUT

IN and OUT are BSON documents.  Modes:

- `analyze`: IN {commands: [BSON bytes]}; OUT {results: [{reply: bytes} | {error, code, explanation}]}.
- `threads`: IN {commands, threads, rounds}: every thread analyses every command `rounds` times, each
  with its own status and analyzer, all at once; OUT {calls, mismatches, results} where a mismatch is a
  result that differs from the first thread's for the same command.
- `abi`: OUT, what the edge cases of the ABI answered (NULL arguments, a second lib, foreign handles,
  explanations after success).
- `internal-error`: the analysis made to raise (RuntimeError, KeyboardInterrupt, RecursionError), then
  restored; OUT {results} as for `analyze`.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

import bson
import cffi
from bson.binary import Binary

CDEF = """
typedef struct mongo_crypt_v1_status mongo_crypt_v1_status;
typedef struct mongo_crypt_v1_lib mongo_crypt_v1_lib;
typedef struct mongo_crypt_v1_query_analyzer mongo_crypt_v1_query_analyzer;
mongo_crypt_v1_status *mongo_crypt_v1_status_create(void);
void mongo_crypt_v1_status_destroy(mongo_crypt_v1_status *status);
int mongo_crypt_v1_status_get_error(const mongo_crypt_v1_status *status);
const char *mongo_crypt_v1_status_get_explanation(const mongo_crypt_v1_status *status);
int mongo_crypt_v1_status_get_code(const mongo_crypt_v1_status *status);
mongo_crypt_v1_lib *mongo_crypt_v1_lib_create(mongo_crypt_v1_status *status);
int mongo_crypt_v1_lib_destroy(mongo_crypt_v1_lib *lib, mongo_crypt_v1_status *status);
uint64_t mongo_crypt_v1_get_version(void);
const char *mongo_crypt_v1_get_version_str(void);
mongo_crypt_v1_query_analyzer *mongo_crypt_v1_query_analyzer_create(mongo_crypt_v1_lib *lib,
                                                                    mongo_crypt_v1_status *status);
void mongo_crypt_v1_query_analyzer_destroy(mongo_crypt_v1_query_analyzer *analyzer);
uint8_t *mongo_crypt_v1_analyze_query(mongo_crypt_v1_query_analyzer *analyzer, const uint8_t *documentBSON,
                                      const char *ns_str, uint32_t ns_len, uint32_t *bson_len,
                                      mongo_crypt_v1_status *status);
void mongo_crypt_v1_bson_free(uint8_t *bson);
"""

ffi = cffi.FFI()
ffi.cdef(CDEF)


class Abi:
    def __init__(self, library: str) -> None:
        self.c = ffi.dlopen(library)

    def status(self, status: Any) -> dict[str, Any]:
        return {"error": self.c.mongo_crypt_v1_status_get_error(status),
                "code": self.c.mongo_crypt_v1_status_get_code(status),
                "explanation": ffi.string(self.c.mongo_crypt_v1_status_get_explanation(status)).decode()}

    def analyze(self, analyzer: Any, command: bytes, status: Any, namespace: bytes = b"db.coll") -> dict[str, Any]:
        length = ffi.new("uint32_t *", 12345)
        reply = self.c.mongo_crypt_v1_analyze_query(analyzer, command, namespace, len(namespace), length, status)
        if reply == ffi.NULL:
            return {**self.status(status), "length": length[0]}
        try:
            return {"reply": Binary(ffi.buffer(reply, length[0])[:]), "error": self.status(status)["error"],
                    "explanation": self.status(status)["explanation"]}
        finally:
            self.c.mongo_crypt_v1_bson_free(reply)


def analyze_all(abi: Abi, commands: list[bytes]) -> list[dict[str, Any]]:
    status = abi.c.mongo_crypt_v1_status_create()
    lib = abi.c.mongo_crypt_v1_lib_create(status)
    assert lib != ffi.NULL, abi.status(status)
    analyzer = abi.c.mongo_crypt_v1_query_analyzer_create(lib, status)
    try:
        return [abi.analyze(analyzer, command, status) for command in commands]
    finally:
        abi.c.mongo_crypt_v1_query_analyzer_destroy(analyzer)
        assert abi.c.mongo_crypt_v1_lib_destroy(lib, status) == 0
        abi.c.mongo_crypt_v1_status_destroy(status)


def threads(abi: Abi, commands: list[bytes], count: int, rounds: int) -> dict[str, Any]:
    status = abi.c.mongo_crypt_v1_status_create()
    lib = abi.c.mongo_crypt_v1_lib_create(status)
    assert lib != ffi.NULL, abi.status(status)
    start = threading.Barrier(count)
    results: list[list[dict[str, Any]]] = [[] for _ in range(count)]

    def work(index: int) -> None:
        own_status = abi.c.mongo_crypt_v1_status_create()
        analyzer = abi.c.mongo_crypt_v1_query_analyzer_create(lib, own_status)
        start.wait()
        for _ in range(rounds):
            for command in commands:
                results[index].append(abi.analyze(analyzer, command, own_status))
        abi.c.mongo_crypt_v1_query_analyzer_destroy(analyzer)
        abi.c.mongo_crypt_v1_status_destroy(own_status)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(count)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert abi.c.mongo_crypt_v1_lib_destroy(lib, status) == 0
    abi.c.mongo_crypt_v1_status_destroy(status)
    expected = results[0][: len(commands)]
    calls = sum(len(r) for r in results)
    mismatches = sum(1 for r in results for i, result in enumerate(r) if result != expected[i % len(commands)])
    return {"calls": calls, "mismatches": mismatches, "results": expected}


def edge_cases(abi: Abi, command: bytes) -> dict[str, Any]:
    c = abi.c
    seen: dict[str, Any] = {"version": c.mongo_crypt_v1_get_version(),
                            "version_str": ffi.string(c.mongo_crypt_v1_get_version_str()).decode()}
    status = c.mongo_crypt_v1_status_create()
    seen["fresh_status"] = abi.status(status)
    seen["null_status"] = {"error": c.mongo_crypt_v1_status_get_error(ffi.NULL),
                           "explanation": ffi.string(c.mongo_crypt_v1_status_get_explanation(ffi.NULL)).decode()}
    seen["destroy_without_lib"] = [c.mongo_crypt_v1_lib_destroy(ffi.NULL, status), abi.status(status)]
    lib = c.mongo_crypt_v1_lib_create(ffi.NULL)  # a NULL status is allowed everywhere
    seen["lib_created"] = lib != ffi.NULL
    second = c.mongo_crypt_v1_lib_create(status)
    seen["second_lib"] = [second == ffi.NULL, abi.status(status)]
    seen["analyzer_of_foreign_lib"] = [c.mongo_crypt_v1_query_analyzer_create(ffi.cast("mongo_crypt_v1_lib *", status),
                                                                              status) == ffi.NULL, abi.status(status)]
    analyzer = c.mongo_crypt_v1_query_analyzer_create(lib, status)
    seen["after_success"] = [abi.analyze(analyzer, command, status)["error"], abi.status(status)]
    seen["null_document"] = abi.analyze(analyzer, ffi.NULL, status)
    seen["short_document"] = abi.analyze(analyzer, b"\x03\x00\x00\x00", status)
    seen["garbage_document"] = abi.analyze(analyzer, b"\x0c\x00\x00\x00\x02a\x00\xff\xff\xff\x7f\x00", status)
    seen["null_analyzer"] = abi.analyze(ffi.NULL, command, status)
    seen["null_status_analysis"] = abi.analyze(analyzer, command, ffi.NULL)
    c.mongo_crypt_v1_bson_free(ffi.NULL)
    seen["destroy_foreign_lib"] = [c.mongo_crypt_v1_lib_destroy(ffi.cast("mongo_crypt_v1_lib *", status), status),
                                   abi.status(status)]
    seen["destroyed"] = c.mongo_crypt_v1_lib_destroy(lib, status)
    seen["analysis_after_destroy"] = abi.analyze(analyzer, command, status)
    c.mongo_crypt_v1_query_analyzer_destroy(analyzer)
    again = c.mongo_crypt_v1_lib_create(status)  # libmongocrypt creates it again after its last user left
    seen["created_again"] = [again != ffi.NULL, abi.status(status)]
    analyzer = c.mongo_crypt_v1_query_analyzer_create(again, status)
    seen["analysis_again"] = abi.analyze(analyzer, command, status)["error"]
    c.mongo_crypt_v1_query_analyzer_destroy(analyzer)
    c.mongo_crypt_v1_lib_destroy(again, ffi.NULL)
    c.mongo_crypt_v1_status_destroy(status)
    c.mongo_crypt_v1_status_destroy(ffi.NULL)
    return seen


def internal_errors(abi: Abi, command: bytes) -> list[dict[str, Any]]:
    """A bug in the analysis (an exception, even a BaseException) comes back as a status, not a crash."""
    import markd.analysis

    c = abi.c
    status = c.mongo_crypt_v1_status_create()
    lib = c.mongo_crypt_v1_lib_create(status)  # before the analysis breaks: lib_create analyses too
    assert lib != ffi.NULL, abi.status(status)
    analyzer = c.mongo_crypt_v1_query_analyzer_create(lib, status)
    original = markd.analysis.mark_command
    results = []
    try:
        for error in (RuntimeError("value-that-must-not-leak"), KeyboardInterrupt(), RecursionError()):
            def broken(command: dict[str, Any], error: BaseException = error, **options: Any) -> dict[str, Any]:
                raise error

            markd.analysis.mark_command = broken
            results.append(abi.analyze(analyzer, command, status))
        markd.analysis.mark_command = original
        results.append(abi.analyze(analyzer, command, status))  # and the library keeps working
        # With the analysis broken, lib_create fails (its warm-up analysis), with the same status.
        c.mongo_crypt_v1_query_analyzer_destroy(analyzer)
        assert c.mongo_crypt_v1_lib_destroy(lib, status) == 0
        markd.analysis.mark_command = broken
        results.append({"lib_created": c.mongo_crypt_v1_lib_create(status) != ffi.NULL, **abi.status(status)})
    finally:
        markd.analysis.mark_command = original
        c.mongo_crypt_v1_status_destroy(status)
    return results


def main(argv: list[str]) -> int:
    library, mode, source, target = argv
    request = bson.decode(Path(source).read_bytes()) if Path(source).exists() else {}
    abi = Abi(library)
    commands = [bytes(c) for c in request.get("commands", [])]
    if mode == "analyze":
        out: dict[str, Any] = {"results": analyze_all(abi, commands)}
    elif mode == "threads":
        out = threads(abi, commands, request["threads"], request["rounds"])
    elif mode == "abi":
        out = edge_cases(abi, commands[0])
    elif mode == "internal-error":
        out = {"results": internal_errors(abi, commands[0])}
    else:
        raise SystemExit(f"unknown mode {mode}")
    Path(target).write_bytes(bson.encode(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
