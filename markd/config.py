"""Settings: mongocryptd's YAML config file, overridden by command-line flags."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field, fields, replace
from typing import Any

DEFAULT_PORT = 27020
DEFAULT_SOCKET_PREFIX = "/tmp"
SOCKET_NAME = "mongocryptd.sock"
DEFAULT_PIDFILE = "mongocryptd.pid"
DEFAULT_SOCKET_PERMISSIONS = 0o700  # as mongod: only the daemon's own user can connect


def file_permissions(value: Any) -> int:
    """mongod's filePermissions: octal digits ("0770", "770", "0o770"), at most 0777."""
    text = str(value).strip().lower()
    digits = text[2:] if text.startswith("0o") else text
    if not digits or any(c not in "01234567" for c in digits) or int(digits, 8) > 0o777:
        raise ValueError(f"filePermissions must be octal permission bits such as 0700 or 0770, not {value!r}")
    return int(digits, 8)


def positive_int(value: Any) -> int:
    number = int(value)
    if number < 1:
        raise ValueError(f"must be at least 1, not {value!r}")
    return number


def log_rotate_mode(value: Any) -> str:
    if value not in ("rename", "reopen"):
        raise ValueError(f"logRotate must be rename or reopen, not {value!r}")
    return str(value)


def log_format_name(value: Any) -> str:
    """mongod's systemLog.logFormat: default | text | json; markd's default is text."""
    if value not in ("default", "text", "json"):
        raise ValueError(f"logFormat must be default, text or json, not {value!r}")
    return "json" if value == "json" else "text"


def _refuse_fork(value: Any) -> bool:
    if bool(value):
        raise ValueError(FORK_REFUSAL)
    return False


FORK_REFUSAL = ("markd does not fork: run it in the foreground under a supervisor (systemd, a container, "
                "or the driver that spawns it)")


@dataclass(frozen=True)
class Settings:
    port: int = DEFAULT_PORT
    bind_ip: tuple[str, ...] = ("127.0.0.1",)
    bind_ip_all: bool = False
    ipv6: bool = False
    unix_socket: bool = True
    unix_socket_prefix: str = DEFAULT_SOCKET_PREFIX
    unix_socket_permissions: int = DEFAULT_SOCKET_PERMISSIONS  # mongod's filePermissions
    pidfile: str = DEFAULT_PIDFILE
    idle_shutdown_secs: float = 0.0  # 0: never
    logpath: str | None = None
    logappend: bool = False
    log_rotate: str = "rename"  # SIGUSR1, as mongod's --logRotate: rename | reopen
    log_format: str = "text"  # text | json
    verbosity: int = 0
    quiet: bool = False
    max_conns: int | None = None  # None: what the file descriptor limit allows (markd.server.default_max_conns)
    frame_timeout_secs: float = 30.0
    metrics_port: int | None = None
    metrics_bind_ip: str = "127.0.0.1"  # the metrics port stays on loopback unless this says otherwise
    # Bytes of requests and replies held at once, all connections together (a compressed request counts
    # at its declared size). Sized for a sidecar.
    in_flight_budget_mb: int = 256
    schema_cache_mb: int = 64  # parsed-schema caches, bounded by bytes as well as entries
    analysis_processes: int = 1  # processes that answer large requests off the event loop (0: none)
    workers: int = 1  # processes serving the port (issue 15); a driver spawns markd without it: one
    tls_handshake_timeout_secs: float = 10.0
    disable_shutdown_command: bool = False
    # Error replies print each value they quote from the command as its type name (drivers log errmsg).
    redact_errors: bool = False
    tls_mode: str = "disabled"  # disabled | requireTLS
    tls_certificate_key_file: str | None = None
    tls_certificate_key_file_password: str | None = None  # for an encrypted key; never shown (getCmdLineOpts)
    tls_ca_file: str | None = None
    # As mongod: with a CA file, clients must present a certificate unless this is set.
    tls_allow_connections_without_certificates: bool = False
    ignored_options: tuple[str, ...] = field(default=())  # mongocryptd's, accepted, of no use to markd

    @property
    def socket_path(self) -> str | None:
        return os.path.join(self.unix_socket_prefix, SOCKET_NAME) if self.unix_socket else None

    @property
    def listen_addresses(self) -> tuple[str, ...]:
        if self.bind_ip_all:
            return ("0.0.0.0", "::") if self.ipv6 else ("0.0.0.0",)
        addresses = self.bind_ip
        if self.ipv6 and "::1" not in addresses and addresses == ("127.0.0.1",):
            addresses = (*addresses, "::1")
        return addresses

    def with_overrides(self, **overrides: Any) -> Settings:
        known = {f.name for f in fields(self)}
        return replace(self, **{k: v for k, v in overrides.items() if k in known and v is not None})


# YAML path -> (Settings field, converter)
_YAML_KEYS: dict[tuple[str, ...], tuple[str, Any]] = {
    ("net", "port"): ("port", int),
    ("net", "bindIp"): ("bind_ip", lambda v: tuple(a.strip() for a in str(v).split(",") if a.strip())),
    ("net", "bindIpAll"): ("bind_ip_all", bool),
    ("net", "ipv6"): ("ipv6", bool),
    ("net", "maxIncomingConnections"): ("max_conns", int),
    ("net", "unixDomainSocket", "enabled"): ("unix_socket", bool),
    ("net", "unixDomainSocket", "pathPrefix"): ("unix_socket_prefix", str),
    ("net", "unixDomainSocket", "filePermissions"): ("unix_socket_permissions", file_permissions),
    ("net", "tls", "mode"): ("tls_mode", str),
    ("net", "tls", "certificateKeyFile"): ("tls_certificate_key_file", str),
    ("net", "tls", "certificateKeyFilePassword"): ("tls_certificate_key_file_password", str),
    ("net", "tls", "CAFile"): ("tls_ca_file", str),
    ("net", "tls", "allowConnectionsWithoutCertificates"): ("tls_allow_connections_without_certificates", bool),
    ("processManagement", "pidFilePath"): ("pidfile", str),
    ("processManagement", "idleShutdownTimeoutSecs"): ("idle_shutdown_secs", float),
    ("systemLog", "path"): ("logpath", str),
    ("systemLog", "logAppend"): ("logappend", bool),
    ("systemLog", "logRotate"): ("log_rotate", log_rotate_mode),
    ("systemLog", "verbosity"): ("verbosity", int),
    ("systemLog", "quiet"): ("quiet", bool),
    ("systemLog", "format"): ("log_format", log_format_name),  # markd's first spelling, still read
    ("systemLog", "logFormat"): ("log_format", log_format_name),  # mongod's
    ("processManagement", "fork"): ("fork", _refuse_fork),
    ("markd", "metricsPort"): ("metrics_port", int),
    ("markd", "frameTimeoutSecs"): ("frame_timeout_secs", float),
    ("markd", "metricsBindIp"): ("metrics_bind_ip", str),
    ("markd", "inFlightBudgetMB"): ("in_flight_budget_mb", int),
    ("markd", "schemaCacheMB"): ("schema_cache_mb", int),
    ("markd", "analysisProcesses"): ("analysis_processes", int),
    ("markd", "workers"): ("workers", positive_int),
    ("markd", "tlsHandshakeTimeoutSecs"): ("tls_handshake_timeout_secs", float),
    ("markd", "disableShutdownCommand"): ("disable_shutdown_command", bool),
    ("markd", "redactErrors"): ("redact_errors", bool),
}


# mongocryptd's own settings (its general server options, as the YAML of mongod 4.2 to 8.x names them)
# that mean nothing to markd: accepted, so a mongocryptd config file still starts markd, and logged as ignored.
# Anything neither here nor in _YAML_KEYS is refused, as mongocryptd refuses it.
IGNORED_YAML_KEYS: frozenset[str] = frozenset({
    "net.listenBacklog", "net.maxIncomingConnectionsOverride", "net.reservedAdminThreads",
    "net.transportLayer", "net.serviceExecutor", "net.priorityPort", "net.wireObjectCheck",
    "net.compression.compressors",  # markd offers no compression (the handshake says so)
    "net.proxyUnixDomainSocket.pathPrefix", "net.proxyUnixDomainSocket.fileGroupId",
    "processManagement.timeZoneInfo", "processManagement.loadExtensions",
    "processManagement.extensionsSignaturePublicKeyPath", "processManagement.extensionsConfigPath",
    "security.redactClientLogData",  # markd's logs never carry a value, redacted or not
    "security.relaxPermChecks",
    "systemLog.destination", "systemLog.syslogFacility", "systemLog.timeStampFormat",
    "systemLog.traceAllExceptions",
})
# Whole subtrees: per-component verbosity and server parameters.
IGNORED_YAML_PREFIXES: tuple[str, ...] = ("systemLog.component.", "setParameter.")


def ignored_yaml_key(dotted: str) -> bool:
    return dotted in IGNORED_YAML_KEYS or dotted.startswith(IGNORED_YAML_PREFIXES)


class ConfigError(ValueError):
    """The config file cannot be read or has a value of the wrong kind."""


def _flatten(tree: dict[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    flat: dict[tuple[str, ...], Any] = {}
    for key, value in tree.items():
        path = (*prefix, str(key))
        if isinstance(value, dict):
            flat.update(_flatten(value, path))
        else:
            flat[path] = value
    return flat


class _YamlInt(int):
    """An int that remembers how the file wrote it: `filePermissions: 770` means octal 0770, as in mongod,
    although YAML reads it as decimal seven hundred and seventy."""

    text: str


@functools.cache
def _loader() -> Any:
    """A SafeLoader subclass that keeps how ints were written. Built on first use: PyYAML costs a few
    milliseconds to import, which a daemon spawned without a config file (by a driver) need not pay."""
    import yaml

    class Loader(yaml.SafeLoader):
        def construct_yaml_int(self, node: yaml.ScalarNode) -> int:  # type: ignore[override]
            value = _YamlInt(super().construct_yaml_int(node))
            value.text = str(node.value)
            return value

    Loader.add_constructor("tag:yaml.org,2002:int", Loader.construct_yaml_int)
    return Loader


def load_config_file(path: str) -> tuple[dict[str, Any], list[str]]:
    """Settings fields from a YAML file, and the dotted keys of mongocryptd's that markd ignores.

    ConfigError for a file that cannot be read, a value of the wrong kind, or a key mongocryptd does not
    have either (a typo must not start a daemon configured otherwise than its operator thinks)."""
    import yaml

    try:
        with open(path, encoding="utf-8") as handle:
            tree = yaml.load(handle, Loader=_loader()) or {}  # a SafeLoader subclass
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"Error reading config file {path}: {exc}") from exc
    if not isinstance(tree, dict):
        raise ConfigError(f"Error reading config file {path}: not a mapping")
    values: dict[str, Any] = {}
    ignored: list[str] = []
    for key_path, raw in _flatten(tree).items():
        target = _YAML_KEYS.get(key_path)
        if target is None:
            dotted = ".".join(key_path)
            if not ignored_yaml_key(dotted):
                raise ConfigError(f"Error reading config file {path}: unrecognised option '{dotted}'")
            ignored.append(dotted)
            continue
        name, convert = target
        if isinstance(raw, _YamlInt):
            raw = raw.text if convert is file_permissions else int(raw)
        try:
            values[name] = convert(raw)
        except (TypeError, ValueError) as exc:
            detail = str(exc) if convert is _refuse_fork else repr(raw)
            raise ConfigError(f"Bad value for {'.'.join(key_path)} in {path}: {detail}") from exc
    values.pop("fork", None)
    return values, ignored


# Settings field -> its place in the YAML tree, for getCmdLineOpts's "parsed" (mongod's layout).
_YAML_PATHS: dict[str, tuple[str, ...]] = {name: path for path, (name, _) in _YAML_KEYS.items()}


_SECRET_FIELDS = frozenset({"tls_certificate_key_file_password"})


def parsed_options(values: dict[str, Any], config_file: str | None) -> dict[str, Any]:
    """The options given (config file, then flags), nested as mongod's getCmdLineOpts shows them."""
    parsed: dict[str, Any] = {"config": config_file} if config_file else {}
    for name, value in values.items():
        path = _YAML_PATHS.get(name)
        if path is None or value is None:
            continue
        if isinstance(value, tuple):
            value = ",".join(value)
        if name in _SECRET_FIELDS:
            value = "<password>"  # as mongod's getCmdLineOpts shows a password
        node = parsed
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return parsed
