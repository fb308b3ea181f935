"""The fail-closed oracle over a real markd process: a sample of random (schema, command) pairs sent by pymongo."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, assume, given, settings

from tests.fuzz.budget import examples
from tests.fuzz.oracle import command_case, judge, known_trigger
from tests.support.process import raw_command

PROCESS = settings(max_examples=examples(30), deadline=None, suppress_health_check=list(HealthCheck))


@pytest.mark.parametrize("flavour", ["csfle", "qe"])
def test_fail_closed_over_the_wire(client, flavour):
    @PROCESS
    @given(command_case(flavour))
    def check(case):
        assume(known_trigger(case) is None)
        command = {k: v for k, v in case.command.items() if k != "$db"}
        reply = raw_command(client, case.database, command)
        findings = judge(case, reply)
        assert findings == [], f"{case.label}: {findings[:5]}\ncommand: {case.command!r}"

    check()
    assert client.admin.command("hello")["ok"] == 1
