"""Settings: mongocryptd's YAML config file, overridden by command-line flags."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from typing import Any

import yaml

DEFAULT_PORT = 27020
DEFAULT_SOCKET_PREFIX = "/tmp"
SOCKET_NAME = "mongocryptd.sock"
DEFAULT_PIDFILE = "mongocryptd.pid"


@dataclass(frozen=True)
class Settings:
    port: int = DEFAULT_PORT
    bind_ip: tuple[str, ...] = ("127.0.0.1",)
    bind_ip_all: bool = False
    ipv6: bool = False
    unix_socket: bool = True
    unix_socket_prefix: str = DEFAULT_SOCKET_PREFIX
    pidfile: str = DEFAULT_PIDFILE
    idle_shutdown_secs: float = 0.0  # 0: never
    logpath: str | None = None
    logappend: bool = False
    log_format: str = "text"  # text | json
    verbosity: int = 0
    quiet: bool = False
    max_conns: int = 10_000
    frame_timeout_secs: float = 30.0
    metrics_port: int | None = None
    tls_mode: str = "disabled"  # disabled | requireTLS
    tls_certificate_key_file: str | None = None
    tls_ca_file: str | None = None
    # As mongod: with a CA file, clients must present a certificate unless this is set.
    tls_allow_connections_without_certificates: bool = False
    unknown_options: tuple[str, ...] = field(default=())

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
    ("net", "tls", "mode"): ("tls_mode", str),
    ("net", "tls", "certificateKeyFile"): ("tls_certificate_key_file", str),
    ("net", "tls", "CAFile"): ("tls_ca_file", str),
    ("net", "tls", "allowConnectionsWithoutCertificates"): ("tls_allow_connections_without_certificates", bool),
    ("processManagement", "pidFilePath"): ("pidfile", str),
    ("processManagement", "idleShutdownTimeoutSecs"): ("idle_shutdown_secs", float),
    ("systemLog", "path"): ("logpath", str),
    ("systemLog", "logAppend"): ("logappend", bool),
    ("systemLog", "verbosity"): ("verbosity", int),
    ("systemLog", "quiet"): ("quiet", bool),
    ("systemLog", "format"): ("log_format", str),
    ("markd", "metricsPort"): ("metrics_port", int),
    ("markd", "frameTimeoutSecs"): ("frame_timeout_secs", float),
}


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


def load_config_file(path: str) -> tuple[dict[str, Any], list[str]]:
    """Settings fields from a YAML file, and the dotted keys markd does not know."""
    try:
        with open(path, encoding="utf-8") as handle:
            tree = yaml.safe_load(handle) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"Error reading config file {path}: {exc}") from exc
    if not isinstance(tree, dict):
        raise ConfigError(f"Error reading config file {path}: not a mapping")
    values: dict[str, Any] = {}
    unknown: list[str] = []
    for key_path, raw in _flatten(tree).items():
        target = _YAML_KEYS.get(key_path)
        if target is None:
            unknown.append(".".join(key_path))
            continue
        name, convert = target
        try:
            values[name] = convert(raw)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"Bad value for {'.'.join(key_path)} in {path}: {raw!r}") from exc
    return values, unknown


# Settings field -> its place in the YAML tree, for getCmdLineOpts's "parsed" (mongod's layout).
_YAML_PATHS: dict[str, tuple[str, ...]] = {name: path for path, (name, _) in _YAML_KEYS.items()}


def parsed_options(values: dict[str, Any], config_file: str | None) -> dict[str, Any]:
    """The options given (config file, then flags), nested as mongod's getCmdLineOpts shows them."""
    parsed: dict[str, Any] = {"config": config_file} if config_file else {}
    for name, value in values.items():
        path = _YAML_PATHS.get(name)
        if path is None or value is None:
            continue
        if isinstance(value, tuple):
            value = ",".join(value)
        node = parsed
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return parsed
