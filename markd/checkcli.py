"""`markd check`: try a command against encryption rules offline (markd.checker), from the shell.

Exit 0: accepted (the marked command and every marked value are printed); 1: refused (mongocryptd's
code and message, then the reason); 2: the input cannot be checked (one line on stderr saying why).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import click
from bson.binary import Binary

from markd.checker import SCHEME_NAMES, BadInput, CheckResult, check, dumps, parse_json

EXIT_ACCEPTED, EXIT_REFUSED, EXIT_BAD_INPUT = 0, 1, 2


class _Inputs:
    """Where RULES, CMD, --filter and --pipeline come from: inline JSON, a file, or `-` (stdin, once)."""

    def __init__(self) -> None:
        self.stdin_taken_by: str | None = None

    def text(self, value: str, what: str) -> str:
        if value == "-":
            if self.stdin_taken_by is not None:
                raise BadInput(f"{what}: stdin ('-') is already {self.stdin_taken_by}; give one of them as a file")
            self.stdin_taken_by = what
            return sys.stdin.read()
        if value.lstrip()[:1] in ("{", "["):
            return value
        try:
            return Path(value).read_text(encoding="utf-8")
        except OSError as exc:
            raise BadInput(f"{what}: cannot read '{value}': {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise BadInput(f"{what}: '{value}' is not UTF-8 text") from None


def _accepted_lines(result: CheckResult) -> list[str]:
    reply = result.reply
    name = next(iter(result.sent), "?")
    lines = [f"accepted: {name} on {result.namespace} ({SCHEME_NAMES[result.scheme]})"]
    if not reply.get("schemaRequiresEncryption"):
        lines.append(f"nothing in {result.namespace} is encrypted: libmongocrypt sends the command as it is")
    elif not reply.get("hasEncryptionPlaceholders"):
        lines.append("nothing in this command needs encrypting: libmongocrypt sends it as it is")
    if result.marked:
        lines.append("marked command (placeholders shown as <placeholder N>; --json prints them as sent):")
    else:
        lines.append("marked command:")
    shown = _numbered(reply.get("result"), iter(range(1, len(result.marked) + 1)))
    if isinstance(shown, dict) and "encryptionInformation" in shown:
        shown["encryptionInformation"] = "<the rules, as sent>"  # QE keeps them for the server: the input again
    lines.append(dumps(shown))
    if result.marked:
        lines.append(f"marked values ({len(result.marked)}):")
        for number, marked in enumerate(result.marked, 1):
            what = marked.algorithm if marked.scheme == "csfle" else f"{marked.query_type} ({marked.use})"
            field = f", field {marked.field}" if marked.field else ""
            lines.append(f"  <placeholder {number}> {marked.path}: {marked.scheme} {what}, key {marked.key}{field}")
    return lines


def _numbered(value: Any, numbers: Iterator[int]) -> Any:
    """`value` with each placeholder replaced by "<placeholder N>", in the order markd.checker lists them."""
    if isinstance(value, Binary) and value.subtype == 6 and bytes(value[:1]) in (b"\x00", b"\x03"):
        return f"<placeholder {next(numbers)}>"
    if isinstance(value, Mapping):
        return {key: _numbered(item, numbers) for key, item in value.items()}
    if isinstance(value, list):
        return [_numbered(item, numbers) for item in value]
    return value


@click.command(name="check", context_settings={"help_option_names": ["--help", "-h"]})
@click.option("--rules", "rules", required=True, metavar="RULES",
              help="A CSFLE jsonSchema, a schema map {ns: jsonSchema}, a QE encryptedFields document or an "
                   "encrypted_fields_map {ns: encryptedFields} (Django's showencryptedfieldsmap output): a file, "
                   "'-' for stdin, or the Extended JSON itself.")
@click.option("--command", "command", metavar="CMD",
              help="The command (find, aggregate, insert, update, delete, findAndModify, count, distinct, create, "
                   "collMod, createIndexes, explain, bulkWrite) in Extended JSON: a file, '-', or the JSON itself.")
@click.option("--filter", "filter_", metavar="FILTER", help="Shortcut: a find with this filter on --namespace.")
@click.option("--pipeline", metavar="PIPELINE", help="Shortcut: an aggregate with this pipeline on --namespace.")
@click.option("--namespace", "-n", metavar="DB.COLL",
              help="Where the command runs (else the command's $db and collection).")
@click.option("--json", "as_json", is_flag=True,
              help="Print {reply, marked, refusal, namespace, scheme} as Extended JSON.")
def check_command(rules: str, command: str | None, filter_: str | None, pipeline: str | None, namespace: str | None,
            as_json: bool) -> int:
    """Try a command against encryption rules with markd's own analysis, offline.

    Exit status: 0 accepted, 1 refused (with the reason), 2 input that cannot be checked.
    """
    given = [name for name, value in (("--command", command), ("--filter", filter_), ("--pipeline", pipeline))
             if value is not None]
    if len(given) != 1:
        raise BadInput("give exactly one of --command, --filter, --pipeline" + (f" (got {', '.join(given)})"
                                                                               if given else ""))
    inputs = _Inputs()
    rules_document = parse_json(inputs.text(rules, "RULES"), "RULES")
    arguments: dict[str, Any] = {"namespace": namespace}
    if command is not None:
        arguments["command"] = parse_json(inputs.text(command, "CMD"), "CMD")
    elif filter_ is not None:
        arguments["filter"] = parse_json(inputs.text(filter_, "--filter"), "--filter")
    else:
        assert pipeline is not None
        arguments["pipeline"] = parse_json(inputs.text(pipeline, "--pipeline"), "--pipeline")
    result = check(rules_document, **arguments)
    if as_json:
        click.echo(result.to_json())
    elif result.refusal is not None:
        click.echo("\n".join(result.refusal.lines()))
    else:
        click.echo("\n".join(_accepted_lines(result)))
    return EXIT_ACCEPTED if result.accepted else EXIT_REFUSED


def _one_line(message: str) -> str:
    return " ".join(message.split())


def main(argv: list[str], prog_name: str = "markd check") -> int:
    """Run `markd check` with `argv` (the arguments after `check`); the exit status."""
    try:
        status = check_command.main(argv, prog_name=prog_name, standalone_mode=False)
    except BadInput as exc:
        click.echo(f"markd check: {_one_line(str(exc))}", err=True)
        return EXIT_BAD_INPUT
    except click.ClickException as exc:
        click.echo(f"markd check: {_one_line(exc.format_message())} (see 'markd check --help')", err=True)
        return EXIT_BAD_INPUT
    except click.Abort:
        return EXIT_BAD_INPUT
    return status if isinstance(status, int) else EXIT_ACCEPTED
