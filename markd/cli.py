"""The command line: mongocryptd's flags, accepted as mongocryptd accepts them."""

from __future__ import annotations

import ssl
import sys
from typing import Any, NoReturn

import click

import markd
from markd import logs
from markd.config import ConfigError, Settings, file_permissions, load_config_file, parsed_options
from markd.pidfile import PidFile, PidFileLocked


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


_CONTEXT = {"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": ["--help", "-h"]}


class _DaemonOrCheck(click.Command):
    """mongocryptd's command line, untouched; only `markd check ...` (markd/checkcli.py) is something else."""

    def main(self, args: Any = None, prog_name: str | None = None, **extra: Any) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        if argv[:1] == ["check"]:
            from markd import checkcli

            sys.exit(checkcli.main(argv[1:], prog_name=f"{prog_name or 'markd'} check"))
        return super().main(argv, prog_name, **extra)


@click.command(cls=_DaemonOrCheck, context_settings=_CONTEXT)
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
@click.option("--logFormat", "log_format", type=click.Choice(["text", "json"]), help="Log line format [text].")
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
@click.option("--tlsHandshakeTimeoutSecs", "tls_handshake_timeout_secs", type=float,
              help="Drop a TLS client that has not finished its handshake this long [10].")
@click.option("--disableShutdownCommand", "disable_shutdown_command", is_flag=True, default=None,
              help="Refuse the shutdown command (shared hosts).")
@click.option("--redactErrors", "redact_errors", is_flag=True, default=None,
              help="Error replies show each value they quote from a command as its type name.")
@click.option("--tlsMode", "tls_mode", type=click.Choice(["disabled", "requireTLS"]), help="TLS [disabled].")
@click.option("--tlsCertificateKeyFile", "tls_certificate_key_file", help="PEM with certificate and key.")
@click.option("--tlsCAFile", "tls_ca_file", help="CA bundle to verify client certificates.")
@click.option("--tlsAllowConnectionsWithoutCertificates", "tls_allow_connections_without_certificates",
              is_flag=True, default=None, help="With --tlsCAFile, still accept clients that present no certificate.")
@click.option("--version", is_flag=True, help="Print the version and exit.")
@click.pass_context
def main(ctx: click.Context, config_file: str | None, version: bool, verbosity: int, **options: Any) -> None:
    """markd: an open, drop-in mongocryptd.

    `markd check --help`: try a command against encryption rules offline, and see why one is refused.
    """
    if version:
        click.echo(f"markd {markd.__version__} (mongocryptd-compatible)")
        return
    base: dict[str, Any] = {}
    unknown_config: list[str] = []
    if config_file:
        try:
            base, unknown_config = load_config_file(config_file)
        except ConfigError as exc:
            click.echo(str(exc), err=True)
            sys.exit(2)
    overrides = dict(options)
    overrides["bind_ip"] = _split_ips(overrides.pop("bind_ip"))
    if overrides.pop("nounixsocket"):
        overrides["unix_socket"] = False
    if verbosity:
        overrides["verbosity"] = verbosity
    settings = Settings().with_overrides(**base).with_overrides(**overrides)
    settings = settings.with_overrides(unknown_options=tuple(ctx.args))
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
    for flag in settings.unknown_options:
        logs.log.warning("ignoring unrecognized option", extra={"attr": {"option": flag}})
    for key in unknown_config:
        logs.log.warning("ignoring unrecognized config file setting", extra={"attr": {"setting": key}})
    parsed = parsed_options({**base, **{k: v for k, v in overrides.items() if v is not None}}, config_file)
    from markd import server

    try:
        code = server.run(settings, ["mongocryptd", *sys.argv[1:]], parsed, pidfile)
    except (OSError, ValueError, ssl.SSLError) as exc:
        _fatal(settings, f"cannot start: {exc}")
    sys.exit(code)


def _configure_logs(settings: Settings, append: bool) -> None:
    logs.configure(settings.logpath, append, settings.log_format, settings.verbosity, settings.quiet)


def _fatal(settings: Settings, message: str) -> NoReturn:
    """Log why markd cannot start, say it on stderr too when the log is a file, and exit 1."""
    logs.log.error(message)
    if settings.logpath:
        click.echo(f"markd: {message}", err=True)
    sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
