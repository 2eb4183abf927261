"""PayFlow's configuration: frozen dataclasses, one per section, and :func:`load_config`.

Sources, later wins: the TOML file (``path``; else ``$PAYFLOW_CONFIG``; else ``./payflow.toml``
if present), then ``PAYFLOW_<SECTION>_<KEY>`` environment variables, then ``overrides`` (the
command line). Every value given by any source is checked, so a bad value in the file is an
error even when the environment overrides it. Any problem raises :class:`ConfigError` with one
line: ``[section] key: expected ..., got ... (from <source>)``.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Annotated, Any, Final, NamedTuple, cast, get_args, get_origin, get_type_hints

from payflow._config_parse import (
    ApiKeysRule,
    AutoBoolRule,
    BoolRule,
    EndpointsRule,
    FloatRule,
    FloatTupleRule,
    IntRule,
    Invalid,
    Rule,
    StrRule,
    StrTupleRule,
    choice,
    is_daemon_id,
    is_network,
    is_queue_name,
    is_redis_url,
    is_token,
    mask_url,
    show,
    url_scheme_ok,
)
from payflow.errors import ConfigError

__all__ = [
    "Config",
    "EndpointConfig",
    "HttpConfig",
    "LogConfig",
    "ProcessorConfig",
    "QueueConfig",
    "RedisConfig",
    "ShutdownConfig",
    "StoreConfig",
    "WebhooksConfig",
    "WorkersConfig",
    "config_summary",
    "load_config",
]

CONFIG_ENV: Final = "PAYFLOW_CONFIG"
DEFAULT_CONFIG_FILE: Final = "payflow.toml"
ENV_PREFIX: Final = "PAYFLOW_"
# The API key the client commands (payflow pay, payflow listen) send: not a daemon setting.
CLIENT_API_KEY_ENV: Final = "PAYFLOW_API_KEY"
LOG_FORMATS: Final = ("auto", "console", "json")
LOG_LEVELS: Final = ("debug", "info", "warning", "error")
EVENT_LOOPS: Final = ("auto", "uvloop", "asyncio")
STORE_SCHEMES: Final = ("memory", "postgresql", "postgres")


# --- what each key allows (rules shared by several keys) -----------------------------------

_QUEUE_NAME = StrRule("a non-empty name without '{', '}' or whitespace", is_queue_name)
_RATE = FloatRule(0.0, 1.0)
_SECRET_KEY_RULE = StrRule("empty, or a passphrase of at least 16 characters",
                           lambda key: key == "" or len(key) >= 16)

# Every key of every section is declared once, below: its type, its rule (``Annotated``: what
# the file, the environment and the flags may set it to, and the words of the one-line error)
# and its default.


@dataclass(frozen=True, kw_only=True, slots=True)
class RedisConfig:
    # "embedded" (in-process server) or a redis://, rediss://, unix:// URL
    url: Annotated[str, StrRule("'embedded' or a redis://, rediss:// or unix:// URL",
                                is_redis_url)] = "embedded"
    embedded_port: Annotated[int, IntRule(1, 65535)] = 6379  # the embedded server's, 127.0.0.1


@dataclass(frozen=True, kw_only=True, slots=True)
class HttpConfig:
    host: Annotated[str, StrRule("a host name or IP address without whitespace",
                                 is_token)] = "127.0.0.1"
    port: Annotated[int, IntRule(0, 65535)] = 8080  # 0 = pick a free port
    max_body_bytes: Annotated[int, IntRule(1024, 16777216)] = 65536
    # to send a request's head (after connecting or idling)
    header_timeout_seconds: Annotated[float, FloatRule(0.1, 3600.0)] = 10.0
    body_timeout_seconds: Annotated[float, FloatRule(0.1, 3600.0)] = 30.0  # to send its body
    # an idle keep-alive connection is closed after this
    keepalive_seconds: Annotated[float, FloatRule(0.1, 3600.0)] = 75.0
    # more evict the oldest idle or slow one
    max_connections: Annotated[int, IntRule(8, 1_000_000)] = 1000


@dataclass(frozen=True, kw_only=True, slots=True)
class QueueConfig:
    payments: Annotated[str, _QUEUE_NAME] = "payflow_jobs"
    webhooks: Annotated[str, _QUEUE_NAME] = "webhook_jobs"
    batch_size: Annotated[int, IntRule(1, 1000)] = 50
    block_timeout_seconds: Annotated[float, FloatRule(0.05, 30.0)] = 1.0
    promote_interval_seconds: Annotated[float, FloatRule(0.05, 60.0)] = 0.5
    # room for any job the API makes from a 64 KiB request
    max_job_bytes: Annotated[int, IntRule(64, 16777216)] = 1048576
    max_redeliveries: Annotated[int, IntRule(1, 1000)] = 5
    # A payment still pending this long after its last change has its job queued again.
    requeue_pending_after_seconds: Annotated[float, FloatRule(1.0, 86400.0)] = 60.0
    # per dead list; the oldest are trimmed beyond
    dead_max_entries: Annotated[int, IntRule(10, 100_000_000)] = 100_000


@dataclass(frozen=True, kw_only=True, slots=True)
class WorkersConfig:
    payments: Annotated[int, IntRule(1, 256)] = 8
    webhooks: Annotated[int, IntRule(1, 256)] = 8


@dataclass(frozen=True, kw_only=True, slots=True)
class ProcessorConfig:
    latency_ms: Annotated[int, IntRule(0, 60000)] = 0  # simulated processor latency
    failure_rate: Annotated[float, _RATE] = 0.0  # random failure rate of the simulator
    max_attempts: Annotated[int, IntRule(1, 100)] = 5  # attempts on transient processor errors


@dataclass(frozen=True, kw_only=True, slots=True)
class EndpointConfig:
    url: str
    secret: str | None = None
    enabled_events: tuple[str, ...] = ("*",)
    description: str = ""


def _build_endpoint(url: str, secret: str | None, events: tuple[str, ...],
                    description: str) -> EndpointConfig:
    return EndpointConfig(url=url, secret=secret, enabled_events=events, description=description)


@dataclass(frozen=True, kw_only=True, slots=True)
class WebhooksConfig:
    timeout_seconds: Annotated[float, FloatRule(0.1, 120.0)] = 15.0
    # attempts in all; past the schedule's end its last delay repeats
    max_attempts: Annotated[int, IntRule(1, 50)] = 10
    # Standard Webhooks' schedule: the delays before attempts 2, 3, … (attempt 1 is at once).
    retry_schedule: Annotated[tuple[float, ...], FloatTupleRule(0.01, 604800.0, most=49)] = (
        5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 50400.0, 72000.0, 86400.0)
    disable_after_hours: Annotated[float, FloatRule(0.001, 8760.0)] = 120.0
    secret_rotation_grace_hours: Annotated[float, FloatRule(0.0, 720.0)] = 24.0
    # The log sink: every event "delivered" to the log (the seed's behaviour). None ("auto"): on
    # with the embedded Redis only. Never a fallback for endpoints a daemon does not know.
    log_sink: Annotated[bool | None, AutoBoolRule()] = None
    # the log sink's simulated failure rate
    simulate_failure_rate: Annotated[float, _RATE] = 0.0
    # CIDRs receivers may resolve to despite being private
    allow_networks: Annotated[tuple[str, ...], StrTupleRule(
        "a list of IP networks such as ['10.0.0.0/8']", "an IP network such as '10.0.0.0/8'",
        is_network)] = ()
    endpoints: Annotated[tuple[EndpointConfig, ...], EndpointsRule(_build_endpoint)] = ()


@dataclass(frozen=True, kw_only=True, slots=True)
class StoreConfig:
    # memory:// (one daemon, gone on restart) or postgresql://…
    url: Annotated[str, StrRule("memory:// or a postgresql:// or postgres:// URL",
                                lambda url: url_scheme_ok(url, STORE_SCHEMES))] = "memory://"
    # encrypts endpoint secrets at rest
    secret_key: Annotated[str, _SECRET_KEY_RULE] = field(default="", repr=False)
    # memory://: finished payments kept (oldest evicted)
    memory_max_payments: Annotated[int, IntRule(100, 100_000_000)] = 100_000


@dataclass(frozen=True, kw_only=True, slots=True)
class LogConfig:
    format: Annotated[str, choice(LOG_FORMATS)] = "auto"
    level: Annotated[str, choice(LOG_LEVELS)] = "info"


@dataclass(frozen=True, kw_only=True, slots=True)
class ShutdownConfig:
    grace_seconds: Annotated[float, FloatRule(0.0, 3600.0)] = 10.0
    # after the grace period, cleanup gets this long before the process exits anyway
    cleanup_seconds: Annotated[float, FloatRule(0.1, 3600.0)] = 15.0


@dataclass(frozen=True, kw_only=True, slots=True)
class ApiKeyConfig:
    name: str
    secret: str = field(repr=False)


@dataclass(frozen=True, kw_only=True, slots=True)
class ApiConfig:
    # none: the API is open (a warning off loopback)
    keys: Annotated[tuple[ApiKeyConfig, ...], ApiKeysRule(
        lambda name, secret: ApiKeyConfig(name=name, secret=secret))] = ()
    require_idempotency_key: Annotated[bool, BoolRule()] = False
    idempotency_ttl_hours: Annotated[float, FloatRule(0.01, 720.0)] = 24.0
    metrics_public: Annotated[bool, BoolRule()] = True  # False: /metrics needs an API key too
    # HMAC key of card fingerprints; empty: generated once and kept in the store.
    card_fingerprint_key: Annotated[str, StrRule(
        "empty, or a key of at least 16 characters",
        lambda key: key == "" or len(key) >= 16)] = field(default="", repr=False)


@dataclass(frozen=True, kw_only=True, slots=True)
class DaemonConfig:
    # empty: <hostname>-<pid>-<random>, new at every start
    id: Annotated[str, StrRule("empty, or 1 to 64 letters, digits, '.', '_' or '-'",
                               is_daemon_id)] = ""
    heartbeat_seconds: Annotated[float, FloatRule(0.1, 60.0)] = 2.0
    heartbeat_ttl_seconds: Annotated[float, FloatRule(0.5, 600.0)] = 10.0
    reap_interval_seconds: Annotated[float, FloatRule(0.1, 600.0)] = 5.0
    # "auto": uvloop when it is installed (the "fast" extra), else asyncio's own loop
    event_loop: Annotated[str, choice(EVENT_LOOPS)] = "auto"


@dataclass(frozen=True, kw_only=True, slots=True)
class Config:
    redis: RedisConfig = field(default_factory=RedisConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    workers: WorkersConfig = field(default_factory=WorkersConfig)
    processor: ProcessorConfig = field(default_factory=ProcessorConfig)
    webhooks: WebhooksConfig = field(default_factory=WebhooksConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    log: LogConfig = field(default_factory=LogConfig)
    shutdown: ShutdownConfig = field(default_factory=ShutdownConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    daemon: DaemonConfig = field(default_factory=DaemonConfig)


def _rules_of(section: type[Any]) -> dict[str, Rule]:
    """A section's keys and their rules, from its fields' ``Annotated`` types."""
    rules = {}
    # (globalns given: else the class's namespace would be the rules' globals)
    for name, hint in get_type_hints(section, globalns=globals(), include_extras=True).items():
        rule = next((a for a in get_args(hint)[1:] if isinstance(a, Rule)), None)
        if get_origin(hint) is not Annotated or rule is None:
            raise TypeError(f"{section.__name__}.{name} has no rule (Annotated[type, Rule])")
        rules[name] = rule
    return rules


# section -> (its dataclass, key -> rule): derived from the dataclasses above.
_SCHEMA: Final[Mapping[str, tuple[type[Any], Mapping[str, Rule]]]] = {
    f.name: (cls, _rules_of(cls))
    for f in fields(Config) for cls in [get_type_hints(Config, globalns=globals())[f.name]]
}

_DEFAULT: Final = "the built-in default"
_RANK_DEFAULT, _RANK_FILE, _RANK_ENV, _RANK_OVERRIDE = range(4)


class _Setting(NamedTuple):
    value: object
    given: object  # as the source wrote it, for messages
    source: str  # the file, environment variable or flag it came from, or _DEFAULT
    rank: int  # which layer it came from: later layers win


_Settings = dict[tuple[str, str], _Setting]


# --- loading --------------------------------------------------------------------------------


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, object]] | None = None,
    override_sources: Mapping[tuple[str, str], str] | None = None,
) -> Config:
    """Read, merge and check the configuration; raise :class:`ConfigError` on any problem.

    ``env`` defaults to ``os.environ``. ``overrides`` maps section -> key -> value as TOML
    would give it (a string is also read the way an environment variable is, and ``None``
    means "not given"); ``override_sources`` names the flag of each, for error messages
    (default "command line").
    """
    environ: Mapping[str, str] = os.environ if env is None else env
    settings: _Settings = {}
    defaults = Config()
    for section, (_cls, rules) in _SCHEMA.items():
        for key in rules:
            _put(settings, section, key, getattr(getattr(defaults, section), key), _DEFAULT,
                 _RANK_DEFAULT)

    found = _find_file(path, environ)
    if found is not None:
        file_path, label, via = found
        for section, table in _read_toml(file_path, label, via).items():
            _check_section(section, label)
            if not isinstance(table, dict):
                raise ConfigError(f"[{section}]: expected a table, got {show(table)} "
                                  f"(from {label})")
            for key, value in table.items():
                _put(settings, section, key, value, label, _RANK_FILE)

    for name in sorted(environ):
        parsed = _env_key(name)
        if parsed is not None:
            _put(settings, *parsed, environ[name], name, _RANK_ENV, text=True)

    sources = override_sources or {}
    for section, values in (overrides or {}).items():
        for key, value in values.items():
            label = sources.get((section, key), "command line")
            _check_section(section, label)
            if value is not None:  # None: the flag was not given
                _put(settings, section, key, value, label, _RANK_OVERRIDE,
                     text=isinstance(value, str))

    config = Config(**{
        section: cls(**{key: settings[section, key].value for key in rules})
        for section, (cls, rules) in _SCHEMA.items()
    })
    _cross_check(config, settings)
    return config


def _check_section(section: str, source: str) -> None:
    if section not in _SCHEMA:
        raise ConfigError(f"[{section}]: unknown section, expected one of "
                          f"{', '.join(_SCHEMA)} (from {source})")


def _put(settings: _Settings, section: str, key: str, value: object, source: str, rank: int,
         *, text: bool = False) -> None:
    """Convert and check one value, then record it (replacing an earlier layer's)."""
    rules = _SCHEMA[section][1]
    rule = rules.get(key)
    if rule is None:
        raise ConfigError(f"[{section}] {key}: unknown key, expected one of "
                          f"{', '.join(rules)} (from {source})")
    try:
        converted = rule.text(cast(str, value)) if text else rule.native(value)
    except Invalid as error:
        raise ConfigError(f"[{section}] {key}{error.where}: {error.detail} "
                          f"(from {source})") from None
    settings[section, key] = _Setting(converted, value, source, rank)


def _find_file(path: str | os.PathLike[str] | None,
               environ: Mapping[str, str]) -> tuple[Path, str, str] | None:
    """The config file to read, its label for messages and what named it ("" if ``path``
    or the default), or None for "no file"."""
    if path is not None:
        return Path(path), os.fspath(path), ""
    named = environ.get(CONFIG_ENV, "")
    if named:
        return Path(named), named, f" (from {CONFIG_ENV})"
    if Path(DEFAULT_CONFIG_FILE).is_file():
        return Path(DEFAULT_CONFIG_FILE), DEFAULT_CONFIG_FILE, ""
    return None


def _read_toml(path: Path, label: str, via: str) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {label!r}{via}") from None
    except OSError as error:
        raise ConfigError(f"cannot read config file {label!r}: {error.strerror}{via}") from None
    except tomllib.TOMLDecodeError as error:
        detail = " ".join(str(error).split())
        raise ConfigError(f"config file {label!r}: invalid TOML: {detail}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {label!r}: invalid TOML: not UTF-8 text") from None


def _env_key(name: str) -> tuple[str, str] | None:
    """``PAYFLOW_HTTP_MAX_BODY_BYTES`` -> ``("http", "max_body_bytes")``; None for a variable
    that is not a setting (``PAYFLOW_CONFIG``, ``PAYFLOW_API_KEY``: the client commands')."""
    if not name.startswith(ENV_PREFIX) or name in (CONFIG_ENV, CLIENT_API_KEY_ENV):
        return None
    rest = name[len(ENV_PREFIX):]
    for section in _SCHEMA:
        prefix = section.upper() + "_"
        if rest.startswith(prefix) and len(rest) > len(prefix):
            return section, rest[len(prefix):].lower()
    return None


def _cross_check(config: Config, settings: _Settings) -> None:
    """Checks that involve two keys; the one set by the later source is blamed."""

    def blame(first: str, second: str, section: str) -> tuple[str, _Setting, str]:
        a, b = settings[section, first], settings[section, second]
        return (first, a, second) if a.rank > b.rank else (second, b, first)

    queue = config.queue
    if queue.payments == queue.webhooks:
        key, setting, other = blame("payments", "webhooks", "queue")
        raise ConfigError(f"[queue] {key}: expected a queue name different from [queue] "
                          f"{other}, got {show(setting.given)} (from {setting.source})")
    daemon = config.daemon
    if daemon.heartbeat_ttl_seconds <= daemon.heartbeat_seconds:
        key, setting, other = blame("heartbeat_ttl_seconds", "heartbeat_seconds", "daemon")
        relation = "greater" if key == "heartbeat_ttl_seconds" else "less"
        raise ConfigError(f"[daemon] {key}: expected a number {relation} than [daemon] "
                          f"{other}, got {show(setting.given)} (from {setting.source})")


# --- start-up summary -----------------------------------------------------------------------


def config_summary(config: Config) -> dict[str, object]:
    """The effective configuration as a JSON-able dict, nested by section, for a start-up log
    line: endpoint secrets become ``"***"``, passwords in Redis / store URLs are masked."""
    summary: dict[str, object] = {}
    for section_field in fields(config):
        section = getattr(config, section_field.name)
        values: dict[str, object] = {}
        for key_field in fields(section):
            value = getattr(section, key_field.name)
            values[key_field.name] = list(value) if isinstance(value, tuple) else value
        summary[section_field.name] = values
    cast(dict[str, object], summary["redis"])["url"] = mask_url(config.redis.url,
                                                               lone_user_is_secret=True)
    cast(dict[str, object], summary["store"])["url"] = mask_url(config.store.url)
    cast(dict[str, object], summary["store"])["secret_key"] = (
        "***" if config.store.secret_key else "")
    cast(dict[str, object], summary["webhooks"])["endpoints"] = [
        {"url": endpoint.url, "secret": None if endpoint.secret is None else "***",
         "enabled_events": list(endpoint.enabled_events), "description": endpoint.description}
        for endpoint in config.webhooks.endpoints
    ]
    cast(dict[str, object], summary["api"])["keys"] = [
        {"name": key.name, "secret": "***"} for key in config.api.keys]
    cast(dict[str, object], summary["api"])["card_fingerprint_key"] = (
        "***" if config.api.card_fingerprint_key else "")
    return summary

