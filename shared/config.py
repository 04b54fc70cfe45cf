"""Service configuration: defaults < YAML file < environment (BOOTHSTUDIO_*) < command-line flags.

One YAML file can configure all three services::

    host: 127.0.0.1
    data_dir: data
    log_level: INFO
    log_format: json            # or "text"
    grace_period: 10            # seconds to finish work on SIGTERM
    database_url: ""            # metadata store; empty = SQLite under data_dir/<service>/
                                # (e.g. postgresql+psycopg://user@host:5432/boothstudio)
    storage_url: ""             # artifact store; empty = the data_dir itself
                                # (e.g. s3://bucket/prefix, or a shared folder)
    storage_options: {}         # for s3fs, e.g. {endpoint_url: "http://minio:9000"}
    auth:
      keys:                     # no keys = auth off
        - {key: "s3cret", roles: [admin]}
        - {key: "viewer", roles: [read]}
    service_api_key: "s3cret"   # key this service presents to the other services
    tls: {cert: server.pem, key: server.key, client_ca: "", root_ca: ca.pem}
    addresses: {catalog: "127.0.0.1:50051", generator: "127.0.0.1:50052",
                trainer: "127.0.0.1:50053"}
    generator:                  # per-service section: port, metrics_port and the service's
      port: 50052               # own settings (typed and checked by services.settings)
      metrics_port: 9102
      queue_size: 16

Environment variables: BOOTHSTUDIO_CONFIG, BOOTHSTUDIO_HOST, BOOTHSTUDIO_PORT,
BOOTHSTUDIO_METRICS_PORT, BOOTHSTUDIO_DATA_DIR, BOOTHSTUDIO_LOG_LEVEL, BOOTHSTUDIO_LOG_FORMAT,
BOOTHSTUDIO_GRACE_PERIOD, BOOTHSTUDIO_DATABASE_URL, BOOTHSTUDIO_STORAGE_URL,
BOOTHSTUDIO_API_KEYS ("key1=read,generate;key2=admin"), BOOTHSTUDIO_SERVICE_API_KEY,
BOOTHSTUDIO_TLS_CERT, BOOTHSTUDIO_TLS_KEY, BOOTHSTUDIO_TLS_CLIENT_CA,
BOOTHSTUDIO_TLS_ROOT_CA (CA for calls to the other services),
BOOTHSTUDIO_CATALOG_ADDRESS, BOOTHSTUDIO_GENERATOR_ADDRESS, BOOTHSTUDIO_TRAINER_ADDRESS.
A service-specific form wins over the generic one: BOOTHSTUDIO_GENERATOR_PORT over
BOOTHSTUDIO_PORT. Settings: BOOTHSTUDIO_GENERATOR_QUEUE_SIZE overrides generator.queue_size
(see services.settings).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ENV_PREFIX = "BOOTHSTUDIO_"

#: service name -> (gRPC port, metrics port)
DEFAULT_PORTS: dict[str, tuple[int, int]] = {
    "catalog": (50051, 9101),
    "generator": (50052, 9102),
    "trainer": (50053, 9103),
}
SERVICE_NAMES = tuple(DEFAULT_PORTS)

ROLES = ("read", "generate", "train", "admin")

class ConfigError(ValueError):
    """A configuration value is missing or malformed."""


@dataclass(frozen=True)
class TLSConfig:
    """Server TLS files. client_ca set = clients must present a certificate signed by it."""

    cert: Path
    key: Path
    client_ca: Path | None = None


@dataclass
class ServiceConfig:
    """Everything a service process needs to start."""

    service: str
    host: str = "127.0.0.1"
    port: int = 0
    metrics_port: int = 0  # 0 = no metrics endpoint
    data_dir: Path = Path("data")
    log_level: str = "INFO"
    log_format: str = "json"
    grace_period: float = 10.0
    #: the metadata store (shared.metadata_store); "" = SQLite under service_dir
    database_url: str = ""
    #: the artifact store (shared.artifact_store); "" = data_dir itself
    storage_url: str = ""
    storage_options: dict[str, Any] = field(default_factory=dict)
    api_keys: dict[str, frozenset[str]] = field(default_factory=dict)  # key -> roles
    service_api_key: str = ""
    tls: TLSConfig | None = None
    root_ca: Path | None = None  # CA to verify other services' TLS certificates (outgoing calls)
    addresses: dict[str, str] = field(default_factory=dict)  # service name -> host:port
    options: dict[str, Any] = field(default_factory=dict)  # the service's section + --set
    max_message_bytes: int = 64 * 1024 * 1024
    config_file: Path | None = None

    @property
    def service_dir(self) -> Path:
        """This service's folder under the data directory (created on demand)."""
        path = self.data_dir / self.service
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_keys)

    def address_of(self, service: str) -> str:
        """host:port of another service (defaults to its default port on this host)."""
        if service in self.addresses:
            return self.addresses[service]
        host = self.host if self.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        return f"{host}:{DEFAULT_PORTS[service][0]}"


def parse_api_keys(value: Any) -> dict[str, frozenset[str]]:
    """Parse keys from YAML (list of {key, roles}) or env ("k1=read,generate;k2=admin")."""
    out: dict[str, frozenset[str]] = {}
    if not value:
        return out
    items: list[tuple[str, Sequence[str]]] = []
    if isinstance(value, str):
        for part in value.split(";"):
            part = part.strip()
            if not part:
                continue
            key, _, role_text = part.partition("=")
            items.append((key.strip(), [r.strip() for r in role_text.split(",") if r.strip()]))
    elif isinstance(value, list):
        for entry in value:
            if not isinstance(entry, Mapping) or "key" not in entry:
                raise ConfigError(f"auth.keys entries need 'key' and 'roles': {entry!r}")
            listed = entry.get("roles") or []
            items.append((str(entry["key"]), [listed] if isinstance(listed, str) else list(listed)))
    else:
        raise ConfigError(f"cannot parse API keys from {type(value).__name__}")
    for key, role_list in items:
        if not key:
            raise ConfigError("empty API key")
        unknown = set(role_list) - set(ROLES)
        if unknown:
            raise ConfigError(f"unknown roles {sorted(unknown)}; known: {list(ROLES)}")
        if not role_list:
            raise ConfigError("an API key needs at least one role")
        out[key] = frozenset(role_list)
    return out


def load_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping")
    return data


def build_arg_parser(service: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"python -m boothstudio.services.{service}",
        description=f"BoothStudio {service} service",
    )
    p.add_argument("--host", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, help=f"gRPC port (default {DEFAULT_PORTS[service][0]})")
    p.add_argument(
        "--metrics-port",
        type=int,
        help=f"Prometheus /metrics port (default {DEFAULT_PORTS[service][1]}; 0 = off)",
    )
    p.add_argument("--data-dir", type=Path, help="data directory (default ./data)")
    p.add_argument("--config", type=Path, help="YAML config file")
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING, ERROR")
    p.add_argument("--log-format", choices=["json", "text"])
    p.add_argument("--grace-period", type=float, help="seconds to drain on SIGTERM")
    p.add_argument(
        "--database-url",
        help="metadata store, e.g. postgresql+psycopg://user@host:5432/boothstudio "
        "(default: SQLite under the data dir)",
    )
    p.add_argument(
        "--storage-url",
        help="artifact store, e.g. s3://bucket/prefix or a shared folder (default: the data dir)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set a per-service option (repeatable)",
    )
    return p


def load_config(
    service: str,
    argv: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> ServiceConfig:
    """Build the configuration of `service` from flags, environment and an optional YAML file."""
    if service not in DEFAULT_PORTS:
        raise ConfigError(f"unknown service {service!r}")
    env = os.environ if env is None else env
    args = build_arg_parser(service).parse_args(argv)
    svc = service.upper()

    def env_get(name: str) -> str | None:
        return env.get(f"{ENV_PREFIX}{svc}_{name}") or env.get(f"{ENV_PREFIX}{name}")

    config_path = args.config or (Path(p) if (p := env_get("CONFIG")) else None)
    file: dict[str, Any] = load_yaml(config_path) if config_path else {}
    section = file.get(service) or {}
    if not isinstance(section, dict):
        raise ConfigError(f"section {service!r} of the config file must be a mapping")
    section = dict(section)

    def pick(flag: Any, env_name: str, file_value: Any, default: Any) -> Any:
        if flag is not None:
            return flag
        e = env_get(env_name)
        if e is not None and e != "":
            return e
        if file_value is not None:
            return file_value
        return default

    port_d, metrics_d = DEFAULT_PORTS[service]
    cfg = ServiceConfig(service=service, config_file=config_path)
    try:
        cfg.host = str(pick(args.host, "HOST", section.pop("host", file.get("host")), cfg.host))
        cfg.port = int(pick(args.port, "PORT", section.pop("port", None), port_d))
        cfg.metrics_port = int(
            pick(args.metrics_port, "METRICS_PORT", section.pop("metrics_port", None), metrics_d)
        )
        cfg.data_dir = Path(pick(args.data_dir, "DATA_DIR", file.get("data_dir"), "data"))
        cfg.log_level = str(pick(args.log_level, "LOG_LEVEL", file.get("log_level"), "INFO"))
        cfg.log_format = str(pick(args.log_format, "LOG_FORMAT", file.get("log_format"), "json"))
        cfg.grace_period = float(
            pick(args.grace_period, "GRACE_PERIOD", file.get("grace_period"), 10.0)
        )
        cfg.database_url = str(
            pick(
                args.database_url,
                "DATABASE_URL",
                section.pop("database_url", file.get("database_url")),
                "",
            )
        ).strip()
        cfg.storage_url = str(
            pick(
                args.storage_url,
                "STORAGE_URL",
                section.pop("storage_url", file.get("storage_url")),
                "",
            )
        ).strip()
        cfg.max_message_bytes = int(
            pick(None, "MAX_MESSAGE_BYTES", file.get("max_message_bytes"), cfg.max_message_bytes)
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from exc
    options = section.pop("storage_options", file.get("storage_options")) or {}
    if not isinstance(options, dict):
        raise ConfigError("storage_options must be a mapping (e.g. {endpoint_url: ...})")
    cfg.storage_options = dict(options)
    if cfg.log_format not in ("json", "text"):
        raise ConfigError(f"log_format must be json or text, not {cfg.log_format!r}")

    env_keys = env_get("API_KEYS")
    auth = file.get("auth") or {}
    cfg.api_keys = parse_api_keys(env_keys if env_keys else auth.get("keys"))
    cfg.service_api_key = str(pick(None, "SERVICE_API_KEY", file.get("service_api_key"), ""))

    tls = file.get("tls") or {}
    cert = pick(None, "TLS_CERT", tls.get("cert"), None)
    key = pick(None, "TLS_KEY", tls.get("key"), None)
    ca = pick(None, "TLS_CLIENT_CA", tls.get("client_ca"), None)
    if bool(cert) != bool(key):
        raise ConfigError("TLS needs both a certificate and a key")
    if cert and key:
        cfg.tls = TLSConfig(Path(cert), Path(key), Path(ca) if ca else None)
    root_ca = pick(None, "TLS_ROOT_CA", tls.get("root_ca"), None)
    cfg.root_ca = Path(root_ca) if root_ca else None

    addresses = dict(file.get("addresses") or {})
    for name in SERVICE_NAMES:
        e = env.get(f"{ENV_PREFIX}{name.upper()}_ADDRESS")
        if e:
            addresses[name] = e
    cfg.addresses = {k: str(v) for k, v in addresses.items()}

    for item in args.set:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        section[k.strip()] = v
    cfg.options = section
    return cfg
