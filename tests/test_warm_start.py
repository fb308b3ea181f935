"""A warm start (issue 15): before markd listens (and so before its pid file and "markd started"), the
analysis is imported and a synthetic request of each scheme has been marked, so a driver's first
marking request does not pay for them."""

from __future__ import annotations

import json

import bson

from markd import core, warm
from markd.commands import Dispatcher
from tests.support.process import MarkdProcess, RawConnection, op_msg_frame


def test_every_warm_up_request_is_marked():
    # Each synthetic request must go the whole way (a refusal would leave its path cold).
    dispatcher = Dispatcher(argv=[], parsed_options={})
    for index, (body, documents) in enumerate(warm._REQUESTS):
        outcome = core.process_frame(warm.frame(body, documents, index), warm._CONNECTION, dispatcher)
        assert outcome.reply is not None
        reply = bson.decode(outcome.reply[21:])
        assert reply["ok"] == 1 and reply["hasEncryptionPlaceholders"] is True, (next(iter(body)), reply)


def test_markd_says_it_listens_once_warm():
    with MarkdProcess() as markd:
        started = next(line for line in markd.wait_for_log("markd started").splitlines() if "markd started" in line)
        assert int(started.split("warmUpMicros=")[1].split()[0]) > 0
        # The warm-up parsed a CSFLE schema and a QE encryptionInformation, before any client spoke.
        with RawConnection(markd.port) as connection:
            connection.send(op_msg_frame({"getMarkdMetrics": 1, "$db": "admin"}))
            cache = connection.read_reply().document["schemaCache"]
        assert cache["misses"] >= 2
        assert json.loads(markd.pidfile.read_text())["port"] == markd.port
