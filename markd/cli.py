"""The command line: mongocryptd's flags, accepted as mongocryptd accepts them, and nothing else.

Every option mongocryptd takes (its own and the general server options it inherits from mongod) is
accepted: markd's own implementation where it has one, otherwise logged as ignored, so a driver's
`mongocryptd_spawn_args` and an existing mongocryptd command line keep working. Anything else is refused
before anything is opened or bound: one line naming the option on stderr, exit 2, as mongocryptd exits
on a bad option.
"""

from __future__ import annotations

import os
import ssl
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import click
import yaml

import markd
from markd import logs
from markd.config import (
    FORK_REFUSAL,
    ConfigError,
    Settings,
    file_permissions,
    load_config_file,
    log_format_name,
    parsed_options,
)
from markd.pidfile import PidFile, PidFileLocked

EXIT_BAD_OPTIONS = 2  # mongod's EXIT_BADOPTIONS
EXIT_NET_ERROR = 48  # mongod's exit code when a listener cannot be set up (its port is taken)

# mongocryptd's command-line options that mean nothing to markd (mongod's general server options of 4.2
# to 8.x that mongocryptd inherits): flag -> whether it takes a value. Accepted and logged as ignored.
IGNORED_FLAGS: dict[str, bool] = {
    # server parameters and logging details markd has no use for
    "--setParameter": True,
    "--timeStampFormat": True,  # markd's log stamps are ISO 8601 UTC
    "--syslog": False,
    "--syslogFacility": True,
    "--logv2": False,
    "--traceExceptions": False,
    "--redactClientLogData": False,  # markd's logs never carry a value, redacted or not
    # networking internals
    "--listenBacklog": True,
    "--networkMessageCompressors": True,  # markd offers no compression; the handshake says so
    "--transportLayer": True,
    "--serviceExecutor": True,
    "--priorityPort": True,
    "--proxyUnixSocketPrefix": True,
    "--proxyUnixSocketFileGroupId": True,
    "--objcheck": False,  # markd always validates what it reads
    "--noobjcheck": False,
    # process management and start-up internals
    "--timeZoneInfo": True,
    "--configExpand": True,
    "--configExpandTimeoutSecs": True,
    "--loadExtensions": True,
    "--extensionsSignaturePublicKeyPath": True,
    "--extensionsConfigPath": True,
    "--relaxPermChecks": False,
    "--crashOnInvalidBSONError": False,
    "--initializerShuffleSeed": True,
    "--enableExperimentalStorageDetailsCmd": False,
    "--tracingSpanRoot": True,
}


def _param_name(flag: str) -> str:
    return "ignored_" + flag.lstrip("-").lower()


_IGNORED_PARAMS: dict[str, str] = {_param_name(flag): flag for flag in IGNORED_FLAGS}


def _with_ignored_flags(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add IGNORED_FLAGS as hidden click options (they are listed in --help's epilog instead)."""
    for flag, takes_value in IGNORED_FLAGS.items():
        if takes_value:
            decorator = click.option(flag, _param_name(flag), multiple=True, hidden=True)
        else:
            decorator = click.option(flag, _param_name(flag), is_flag=True, hidden=True)
        command = decorator(command)
    return command


def _split_ips(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _file_permissions(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return file_permissions(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


_CONTEXT = {"help_option_names": ["--help", "-h"]}
_EPILOG = ("Also accepted, as mongocryptd accepts them, and ignored with a warning: "
           + ", ".join(sorted(IGNORED_FLAGS, key=str.lower)) + ".")


@click.command(context_settings=_CONTEXT, epilog=_EPILOG)
@click.option("--port", type=int, help="TCP port [27020].")
@click.option("--bind_ip", "bind_ip", help="Comma-separated addresses to listen on [127.0.0.1].")
@click.option("--bind_ip_all", is_flag=True, default=None, help="Listen on every interface.")
@click.option("--ipv6", is_flag=True, default=None, help="Also listen on IPv6 (::1 by default).")
@click.option("--idleShutdownTimeoutSecs", "idle_shutdown_secs", type=float,
              help="Exit after this many seconds without a command (0: never).")
@click.option("--pidfilepath", "pidfile", help="Pid file [./mongocryptd.pid].")
@click.option("--unixSocketPrefix", "unix_socket_prefix", help="Directory of mongocryptd.sock [/tmp].")
@click.option("--nounixsocket", is_flag=True, default=None, help="Do not listen on a Unix socket.")
@click.option("--filePermissions", "unix_socket_permissions", callback=_file_permissions, metavar="OCTAL",
              help="Permissions of the Unix socket file [0700]; 0770 lets its group connect.")
@click.option("--logpath", help="Log to this file instead of stdout.")
@click.option("--logappend", is_flag=True, default=None, help="Append to --logpath.")
@click.option("--logRotate", "log_rotate", type=click.Choice(["rename", "reopen"]),
              help="What SIGUSR1 does to --logpath [rename]; SIGHUP always reopens it.")
@click.option("--logFormat", "log_format", type=click.Choice(["default", "text", "json"]),
              help="Log line format [text] (default is text).")
@click.option("--quiet", is_flag=True, default=None, help="Only warnings and errors.")
@click.option("-v", "--verbose", "verbosity", count=True, help="Debug logging (per command).")
@click.option("--config", "-f", "config_file", type=click.Path(dir_okay=False),
              help="YAML config file (mongod's format).")
@click.option("--maxConns", "max_conns", type=int,
              help="Maximum open connections [80% of the file descriptor limit]; at the limit the longest-idle "
              "connection is closed to admit a new one.")
@click.option("--frameTimeoutSecs", "frame_timeout_secs", type=float,
              help="Drop a client that leaves a message half-sent, or a reply unread, this long [30].")
@click.option("--metricsPort", "metrics_port", type=int, help="Serve Prometheus /metrics on this port.")
@click.option("--metricsBindIp", "metrics_bind_ip", help="Address of the metrics port [127.0.0.1].")
@click.option("--inFlightBudgetMB", "in_flight_budget_mb", type=int,
              help="Megabytes of requests and replies held at once, all clients together [256].")
@click.option("--schemaCacheMB", "schema_cache_mb", type=int, help="Megabytes of parsed schemas kept [64].")
@click.option("--analysisProcesses", "analysis_processes", type=int,
              help="Processes that analyse large requests off the event loop [1]; 0 analyses them in line.")
@click.option("--workers", "workers", type=click.IntRange(min=1),
              help="Processes serving the port, each on its own core [1]: a supervisor hands them the "
              "connections in turn, keeps one pid file and one idle clock, restarts one that dies.")
@click.option("--tlsHandshakeTimeoutSecs", "tls_handshake_timeout_secs", type=float,
              help="Drop a TLS client that has not finished its handshake this long [10].")
@click.option("--disableShutdownCommand", "disable_shutdown_command", is_flag=True, default=None,
              help="Refuse the shutdown command (shared hosts).")
@click.option("--redactErrors", "redact_errors", is_flag=True, default=None,
              help="Error replies show each value they quote from a command as its type name.")
@click.option("--tlsMode", "tls_mode", type=click.Choice(["disabled", "requireTLS"]), help="TLS [disabled].")
@click.option("--tlsCertificateKeyFile", "tls_certificate_key_file", help="PEM with certificate and key.")
@click.option("--tlsCertificateKeyFilePassword", "tls_certificate_key_file_password",
              help="Password of an encrypted --tlsCertificateKeyFile.")
@click.option("--tlsCAFile", "tls_ca_file", help="CA bundle to verify client certificates.")
@click.option("--tlsAllowConnectionsWithoutCertificates", "tls_allow_connections_without_certificates",
              is_flag=True, default=None, help="With --tlsCAFile, still accept clients that present no certificate.")
@click.option("--fork", is_flag=True, hidden=True)  # mongocryptd's; refused below, with the reason
@click.option("--outputConfig", "output_config", is_flag=True, help="Print the resolved options as YAML and exit.")
@click.option("--version", is_flag=True, help="Print the version and exit.")
@_with_ignored_flags
def command(config_file: str | None, version: bool, verbosity: int, fork: bool, output_config: bool,
            **options: Any) -> None:
    """markd: an open, drop-in mongocryptd.

    `markd check --help`: try a command against encryption rules offline, and see why one is refused.
    """
    if version:
        click.echo(f"markd {markd.__version__} (mongocryptd-compatible)")
        return
    if fork:
        _refuse(f"--fork: {FORK_REFUSAL}")
    ignored = [_IGNORED_PARAMS[name] for name in _IGNORED_PARAMS if options.pop(name)]
    base: dict[str, Any] = {}
    ignored_config: list[str] = []
    if config_file:
        try:
            base, ignored_config = load_config_file(config_file)
        except ConfigError as exc:
            _refuse(str(exc))
    overrides = dict(options)
    overrides["bind_ip"] = _split_ips(overrides.pop("bind_ip"))
    if overrides.pop("nounixsocket"):
        overrides["unix_socket"] = False
    if overrides["log_format"] is not None:
        overrides["log_format"] = log_format_name(overrides["log_format"])
    if verbosity:
        overrides["verbosity"] = verbosity
    parsed = parsed_options({**base, **{k: v for k, v in overrides.items() if v is not None}}, config_file)
    if output_config:
        click.echo(yaml.safe_dump(parsed, sort_keys=True).rstrip())
        return
    settings = Settings().with_overrides(**base).with_overrides(**overrides)
    settings = settings.with_overrides(ignored_options=(*ignored, *ignored_config))
    # The pid file lock comes first: a process that loses the race must not truncate the winner's log.
    pidfile = PidFile(settings.pidfile) if settings.pidfile else None
    unopenable_pidfile = ""
    if pidfile is not None:
        try:
            pidfile.acquire()
        except PidFileLocked:
            _configure_logs(settings, append=True)
            logs.log.info("another markd is already serving; exiting",
                          extra={"attr": {"reason": f"pid file {pidfile.path} is locked by another process"}})
            sys.exit(0)
        except OSError as exc:
            unopenable_pidfile = f"cannot open the pid file {pidfile.path}: {exc.strerror or exc}"
            if options.get("pidfile") is not None or "pidfile" in base:
                _configure_logs(settings, append=True)
                _fatal(settings, f"{unopenable_pidfile} (choose a writable place with --pidfilepath)")
            # The default ./mongocryptd.pid in a read-only working directory (a driver spawning markd from a
            # locked-down app): run without one; the port still lets only one daemon listen.
            pidfile = None
            settings = settings.with_overrides(pidfile="")
    _configure_logs(settings, append=settings.logappend)
    if unopenable_pidfile:
        logs.log.warning("running without a pid file", extra={"attr": {"reason": unopenable_pidfile}})
    for flag in ignored:
        logs.log.warning("ignoring an option of mongocryptd's that markd has no use for",
                         extra={"attr": {"option": flag}})
    for key in ignored_config:
        logs.log.warning("ignoring a config file setting of mongocryptd's that markd has no use for",
                         extra={"attr": {"setting": key}})
    from markd import server

    try:
        code = server.run(settings, ["mongocryptd", *sys.argv[1:]], parsed, pidfile)
    except server.PortInUse as exc:
        _fatal(settings, f"cannot start: {exc}", EXIT_NET_ERROR)
    except (OSError, ValueError, ssl.SSLError) as exc:
        _fatal(settings, f"cannot start: {exc}")
    sys.exit(code)


def _configure_logs(settings: Settings, append: bool) -> None:
    logs.configure(settings.logpath, append, settings.log_format, settings.verbosity, settings.quiet)


def _fatal(settings: Settings, message: str, exit_code: int = 1) -> NoReturn:
    """Log why markd cannot start, say it on stderr too when the log is a file, and exit."""
    logs.log.error(message)
    if settings.logpath:
        click.echo(f"markd: {message}", err=True)
    sys.exit(exit_code)


def _refuse(message: str) -> NoReturn:
    """A bad command line or config file: one line on stderr, exit 2, nothing opened or bound."""
    click.echo(f"markd: {' '.join(message.split())}", err=True)
    sys.exit(EXIT_BAD_OPTIONS)


def _usage_error_line(error: click.UsageError) -> str:
    if isinstance(error, click.NoSuchOption):
        line = f"unrecognised option '{error.option_name}'"
        # Suggest markd's own options only: an ignored one would be no better than the typo.
        hints = sorted(set(error.possibilities or ()) - set(IGNORED_FLAGS) - {"--fork"})
        if hints:
            line += f" (did you mean {' or '.join(hints)}?)"
        return f"{line}; try 'markd --help'"
    return error.format_message()


def _program_name() -> str:
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "markd"
    return "python -m markd" if name in ("__main__.py", "-m", "-c") else name


def main(argv: list[str] | None = None) -> NoReturn:
    """The `markd` and `mongocryptd` console scripts, and `python -m markd`."""
    arguments = sys.argv[1:] if argv is None else argv
    if arguments[:1] == ["check"]:  # mongocryptd's command line stays untouched; only this is something else
        from markd import checkcli

        sys.exit(checkcli.main(arguments[1:], prog_name=f"{_program_name()} check"))
    try:
        result = command.main(arguments, prog_name=_program_name(),
                              standalone_mode=False)
    except click.UsageError as exc:
        _refuse(_usage_error_line(exc))
    except click.ClickException as exc:
        _refuse(exc.format_message())
    except click.Abort:
        sys.exit(1)
    sys.exit(result if isinstance(result, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
