"""docs/check.md's examples are tests: its files are written, its commands run, their output compared.

Fenced blocks, by info string:
- `json NAME` (or `text NAME`): a file the examples use, written to a scratch directory;
- `console`: `$ command` lines run there with the venv's `markd` first on PATH; the lines up to the next
  `$` are the expected output (stdout, or stderr for input that cannot be checked), and the exit status
  is the one the output implies (accepted: 0, refused: 1, `markd check:` 2; --json: refusal or not);
- `python`: run there, as a script (it asserts what it shows);
- `text daemon-log RULES`: the line a running markd logs when libmongocrypt sends it the refused range
  query of the CSFLE section under RULES (timestamp and connection id aside);
- anything else (`shell`, ...): shown, not run.

`python -m tests.test_check_docs` rewrites the expected output of every console block from what the
commands print now (review the diff: the documentation is the contract).
"""

from __future__ import annotations

import os
import re
import runpy
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from bson import json_util

from tests.support.process import BIN_DIR, MarkdProcess, raw_command

DOC = Path(__file__).resolve().parent.parent / "docs" / "check.md"
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```$", re.M | re.S)
STATUS = (("accepted: ", 0), ("refused: ", 1), ("markd check: ", 2))


def expected_status(output: str) -> int:
    """The exit status an output implies (--json: whether it holds a refusal)."""
    if output.startswith("{"):
        return 0 if json_util.loads(output)["refusal"] is None else 1
    return next(status for prefix, status in STATUS if output.startswith(prefix))


@dataclass
class Block:
    info: list[str]
    body: str
    start: int  # offsets of the body in the document
    end: int


def blocks(text: str) -> list[Block]:
    return [Block(m.group(1).split(), m.group(2), m.start(2), m.end(2)) for m in FENCE.finditer(text)]


def files(text: str) -> dict[str, str]:
    return {block.info[1]: block.body for block in blocks(text)
            if len(block.info) == 2 and block.info[0] in ("json", "text")}


def console_steps(body: str) -> list[tuple[str, str]]:
    """(command, expected output) for each `$ ` line of a console block."""
    steps: list[tuple[str, list[str]]] = []
    for line in body.splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        else:
            assert steps, f"output before any command in:\n{body}"
            steps[-1][1].append(line)
    return [(command, "\n".join(output)) for command, output in steps]


def run(command: str, workdir: Path) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "PATH": f"{BIN_DIR}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(["bash", "-c", command], cwd=workdir, env=environment, capture_output=True, text=True,
                          timeout=120)


def _scratch(tmp: Path, text: str) -> Path:
    for name, body in files(text).items():
        (tmp / name).write_text(body)
    return tmp


TEXT = DOC.read_text()
CONSOLE = [(command, expected) for block in blocks(TEXT) if block.info == ["console"]
           for command, expected in console_steps(block.body)]
PYTHON = [block.body for block in blocks(TEXT) if block.info == ["python"]]
DAEMON_LOG = [block for block in blocks(TEXT) if block.info[:1] == ["text"] and "daemon-log" in block.info]


def test_the_page_has_examples_of_every_kind() -> None:
    commands = " ".join(command for command, _ in CONSOLE)
    for rules in ("people.schema.json", "clinic.fields.json", "fields_map.json"):  # CSFLE, QE, Django
        assert f"--rules {rules}" in commands
    outcomes = {expected_status(expected) for _, expected in CONSOLE}
    assert outcomes == {0, 1, 2}
    assert PYTHON and DAEMON_LOG


@pytest.mark.parametrize(("command", "expected"), CONSOLE, ids=[f"console-{i}" for i in range(len(CONSOLE))])
def test_console_example(command: str, expected: str, tmp_path: Path) -> None:
    assert shlex.split(command)[:2] == ["markd", "check"]
    done = run(command, _scratch(tmp_path, TEXT))
    output = (done.stdout + done.stderr).rstrip("\n")
    assert output == expected
    assert done.returncode == expected_status(expected), done


@pytest.mark.parametrize("source", PYTHON, ids=[f"python-{i}" for i in range(len(PYTHON))])
def test_python_example(source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    workdir = _scratch(tmp_path, TEXT)
    script = workdir / "example.py"
    script.write_text(source)
    monkeypatch.chdir(workdir)
    runpy.run_path(str(script), run_name="__main__")


def test_readme_example_is_one_of_the_pages() -> None:
    """The README shows one example (indented): the very command and output the page runs."""
    readme = (DOC.parent.parent / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(readme) if line.startswith("    $ markd check"))
    shown = []
    for line in readme[start:]:
        if not line.startswith("    "):
            break
        shown.append(line[4:])
    assert len(shown) > 2 and "\n".join(shown) in TEXT


def _log_line(line: str) -> str:
    """A log line without what changes from run to run: the time and the connection id."""
    line = re.sub(r"^\S+(?: \S+)? (?=INFO )", "", line.strip())
    return re.sub(r"\bconn=\d+", "conn=1", line)


@pytest.mark.parametrize("block", DAEMON_LOG, ids=[f"daemon-log-{i}" for i in range(len(DAEMON_LOG))])
def test_daemon_log_example(block: Block) -> None:
    rules = json_util.loads(files(TEXT)[block.info[2]])
    (expected,) = block.body.splitlines()
    daemon = MarkdProcess()
    daemon.args = ["--logpath", str(daemon.logfile)]  # info level, as deployed
    with daemon, daemon.client() as client:
        reply = raw_command(client, "hr", {"find": "people", "filter": {"ssn": {"$gt": "100-00-0000"}},
                                           "jsonSchema": rules, "isRemoteSchema": False})
        assert reply["code"] == 51118
        text = daemon.wait_for_log("command refused")
    (line,) = [line for line in text.splitlines() if "command refused" in line]
    assert _log_line(line) == _log_line(expected)


def rewrite(text: str, workdir: Path) -> str:
    """`text` with every console block's output replaced by what its commands print now."""
    pieces: list[str] = []
    last = 0
    for block in blocks(text):
        if block.info != ["console"]:
            continue
        lines = []
        for command, _ in console_steps(block.body):
            done = run(command, workdir)
            lines.append(f"$ {command}")
            lines.extend((done.stdout + done.stderr).rstrip("\n").splitlines())
        pieces.append(text[last:block.start])
        pieces.append("\n".join(lines) + "\n")
        last = block.end
    pieces.append(text[last:])
    return "".join(pieces)


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        updated = rewrite(TEXT, _scratch(Path(scratch), TEXT))
    if updated != TEXT:
        DOC.write_text(updated)
        print(f"rewrote the examples' output in {DOC}")
    sys.exit(0)
