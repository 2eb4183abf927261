"""Tests of payflow.config: defaults, the three sources and their order, every error class."""

from __future__ import annotations

import dataclasses
import json
import re
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import pytest

from payflow import urls
from payflow._config_parse import BoolRule, Invalid, mask_url
from payflow.config import (
    ApiConfig,
    ApiKeyConfig,
    Config,
    EndpointConfig,
    HttpConfig,
    QueueConfig,
    RedisConfig,
    WebhooksConfig,
    config_summary,
    load_config,
)
from payflow.errors import ConfigError, PayFlowError

HTTP_KEYS = "header_timeout_seconds, body_timeout_seconds, keepalive_seconds, max_connections"

SHIPPED = Path(__file__).resolve().parent.parent / "payflow.toml"


@pytest.fixture(autouse=True)
def _empty_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run in an empty directory so the repo's ./payflow.toml is not picked up by default."""
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)


def write(tmp_path: Path, text: str, name: str = "payflow.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(
    tmp_path: Path,
    toml: str | None = None,
    env: dict[str, str] | None = None,
    *,
    path: Path | None = None,
    overrides: Mapping[str, Mapping[str, object]] | None = None,
    override_sources: Mapping[tuple[str, str], str] | None = None,
) -> str:
    """The message of the ConfigError that loading raises (``toml`` is written to
    ``tmp_path/payflow.toml`` and loaded); asserts it is one line."""
    if toml is not None:
        path = write(tmp_path, toml)
    with pytest.raises(ConfigError) as info:
        load_config(path, env=env or {}, overrides=overrides, override_sources=override_sources)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- defaults and sources -------------------------------------------------------------------


def test_defaults() -> None:
    config = load_config(env={})
    assert config == Config()
    assert config.redis == RedisConfig(url="embedded", embedded_port=6379)
    assert config.http == HttpConfig(host="127.0.0.1", port=8080, max_body_bytes=65536)
    assert config.queue.payments == "payflow_jobs"
    assert config.queue.webhooks == "webhook_jobs"
    assert config.queue.block_timeout_seconds == 1.0
    assert config.workers.payments == 8
    assert config.processor.failure_rate == 0.0
    assert config.webhooks.retry_schedule[0] == 5.0 and config.webhooks.max_attempts == 10
    assert config.webhooks.allow_networks == ()
    assert config.webhooks.endpoints == ()
    assert config.store.url == "memory://"
    assert (config.log.format, config.log.level) == ("auto", "info")
    assert config.shutdown.grace_seconds == 10.0


def test_config_is_frozen() -> None:
    config = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.http.port = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        cast(Any, HttpConfig)(8080)  # fields are keyword-only


def test_config_error_is_a_payflow_error() -> None:
    assert issubclass(ConfigError, PayFlowError)


def test_file_values(tmp_path: Path) -> None:
    path = write(tmp_path, """
[redis]
url = "redis://localhost:6380/1"
[http]
port = 9000
[queue]
block_timeout_seconds = 2      # an int is fine for a float field
batch_size = 10
[webhooks]
allow_networks = ["10.0.0.0/8", "fd00::/8"]
[log]
level = "DEBUG"
""")
    config = load_config(path, env={})
    assert config.redis.url == "redis://localhost:6380/1"
    assert config.http.port == 9000
    assert config.http.host == "127.0.0.1"
    assert config.queue.block_timeout_seconds == 2.0
    assert isinstance(config.queue.block_timeout_seconds, float)
    assert config.queue.batch_size == 10
    assert config.webhooks.allow_networks == ("10.0.0.0/8", "fd00::/8")
    assert config.log.level == "debug"


def test_file_from_payflow_config_env_and_from_cwd(tmp_path: Path) -> None:
    named = write(tmp_path, "[http]\nport = 1111\n", "named.toml")
    assert load_config(env={"PAYFLOW_CONFIG": str(named)}).http.port == 1111
    write(Path.cwd(), "[http]\nport = 2222\n")
    assert load_config(env={}).http.port == 2222
    assert load_config(env={"PAYFLOW_CONFIG": str(named)}).http.port == 1111
    assert load_config(named, env={"PAYFLOW_CONFIG": "/nonexistent.toml"}).http.port == 1111


def test_env_overrides_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[http]\nport = 9000\nhost = '0.0.0.0'\n[redis]\nembedded_port = 7000\n")
    config = load_config(path, env={
        "PAYFLOW_HTTP_PORT": "9100",
        "PAYFLOW_REDIS_EMBEDDED_PORT": "7001",
        "PAYFLOW_HTTP_MAX_BODY_BYTES": "2048",
        "PAYFLOW_WORKERS_PAYMENTS": "3",
        "PAYFLOW_QUEUE_BLOCK_TIMEOUT_SECONDS": "0.25",
        "PAYFLOW_PROCESSOR_FAILURE_RATE": "1",
        "PAYFLOW_WEBHOOKS_ALLOW_NETWORKS": " 10.0.0.0/8, ,192.168.0.0/16,",
        "PAYFLOW_LOG_FORMAT": "json",
    })
    assert config.http.port == 9100
    assert config.http.host == "0.0.0.0"
    assert config.redis.embedded_port == 7001
    assert config.http.max_body_bytes == 2048
    assert config.workers.payments == 3
    assert config.queue.block_timeout_seconds == 0.25
    assert config.processor.failure_rate == 1.0
    assert config.webhooks.allow_networks == ("10.0.0.0/8", "192.168.0.0/16")
    assert config.log.format == "json"


def test_empty_env_list_clears_file_list(tmp_path: Path) -> None:
    path = write(tmp_path, "[webhooks]\nallow_networks = ['10.0.0.0/8']\n")
    assert load_config(path, env={"PAYFLOW_WEBHOOKS_ALLOW_NETWORKS": ""}) == Config()


def test_overrides_beat_env(tmp_path: Path) -> None:
    path = write(tmp_path, "[http]\nport = 9000\n")
    config = load_config(
        path,
        env={"PAYFLOW_HTTP_PORT": "9100", "PAYFLOW_REDIS_URL": "redis://env-host"},
        overrides={"http": {"port": 9200}, "redis": {"url": "redis://cli-host"},
                   "workers": {"webhooks": None}},  # None: flag not given
    )
    assert config.http.port == 9200
    assert config.redis.url == "redis://cli-host"
    assert config.workers.webhooks == 8


def test_override_strings_are_read_like_env() -> None:
    config = load_config(env={}, overrides={"http": {"port": "9300"},
                                            "webhooks": {"allow_networks": "10.0.0.0/8,::1"}})
    assert config.http.port == 9300
    assert config.webhooks.allow_networks == ("10.0.0.0/8", "::1")


def test_unrelated_payflow_env_vars_ignored() -> None:
    env = {"PAYFLOW_CONFIG": "", "PAYFLOW_REQUIRE_SERVICES": "1", "PAYFLOW_LISTEN_SECRET": "k",
           "PAYFLOW_HTTPX_PORT": "x", "PAYFLOW_LOGS_DIR": "/tmp", "PAYFLOW_HTTP_": "1",
           "HTTP_PORT": "abc", "payflow_http_port": "abc"}
    assert load_config(env=env) == Config()


# --- errors ---------------------------------------------------------------------------------


def test_unknown_section_in_file(tmp_path: Path) -> None:
    path = tmp_path / "payflow.toml"
    assert error_of(tmp_path, "[htp]\nport = 1\n") == (
        "[htp]: unknown section, expected one of redis, http, queue, workers, processor, "
        f"webhooks, store, log, shutdown, api, daemon (from {path})")


def test_section_not_a_table(tmp_path: Path) -> None:
    assert error_of(tmp_path, "http = 5\n").startswith("[http]: expected a table, got 5 (from ")


def test_unknown_key_in_file(tmp_path: Path) -> None:
    assert error_of(tmp_path, "[http]\nprot = 1\n") == (
        "[http] prot: unknown key, expected one of host, port, max_body_bytes, "
        f"{HTTP_KEYS} (from {tmp_path / 'payflow.toml'})")


def test_unknown_key_in_known_section_env() -> None:
    assert error_of(Path(), env={"PAYFLOW_HTTP_X": "1"}) == (
        f"[http] x: unknown key, expected one of host, port, max_body_bytes, {HTTP_KEYS} "
        "(from PAYFLOW_HTTP_X)")


def test_unknown_override_section_and_key() -> None:
    assert error_of(Path(), overrides={"htp": {"port": 1}}).startswith(
        "[htp]: unknown section, expected one of redis, ")
    assert error_of(Path(), overrides={"http": {"prot": 1}}) == (
        f"[http] prot: unknown key, expected one of host, port, max_body_bytes, {HTTP_KEYS} "
        "(from command line)")


def test_wrong_type_in_file_names_file_label(tmp_path: Path) -> None:
    write(Path.cwd(), '[http]\nport = "abc"\n')
    with pytest.raises(ConfigError) as info:
        load_config(env={})
    assert str(info.value) == (
        "[http] port: expected an integer from 0 to 65535, got 'abc' (from payflow.toml)")


def test_wrong_type_in_env() -> None:
    assert error_of(Path(), env={"PAYFLOW_HTTP_PORT": "abc"}) == (
        "[http] port: expected an integer from 0 to 65535, got 'abc' (from PAYFLOW_HTTP_PORT)")


@pytest.mark.parametrize("text", ["1.5", "abc", "", "0x10", "1e3"])
def test_env_int_rejects_non_integers(text: str) -> None:
    assert error_of(Path(), env={"PAYFLOW_QUEUE_BATCH_SIZE": text}) == (
        f"[queue] batch_size: expected an integer from 1 to 1000, got {text!r} "
        "(from PAYFLOW_QUEUE_BATCH_SIZE)")


@pytest.mark.parametrize("text", ["abc", "nan", "inf", "-0.1", "1.01"])
def test_env_float_rejects_bad_numbers(text: str) -> None:
    assert error_of(Path(), env={"PAYFLOW_PROCESSOR_FAILURE_RATE": text}) == (
        f"[processor] failure_rate: expected a number from 0 to 1, got {text!r} "
        "(from PAYFLOW_PROCESSOR_FAILURE_RATE)")


def test_bool_is_not_an_int(tmp_path: Path) -> None:
    assert error_of(tmp_path, "[queue]\nbatch_size = true\n") == (
        "[queue] batch_size: expected an integer from 1 to 1000, got true "
        f"(from {tmp_path / 'payflow.toml'})")
    assert error_of(tmp_path, "[queue]\nblock_timeout_seconds = false\n").startswith(
        "[queue] block_timeout_seconds: expected a number from 0.05 to 30, got false (from ")


def test_float_is_not_an_int(tmp_path: Path) -> None:
    assert error_of(tmp_path, "[workers]\npayments = 2.0\n").startswith(
        "[workers] payments: expected an integer from 1 to 256, got 2.0 (from ")


def test_string_for_float_in_file(tmp_path: Path) -> None:
    assert error_of(tmp_path, "[shutdown]\ngrace_seconds = '10'\n").startswith(
        "[shutdown] grace_seconds: expected a number from 0 to 3600, got '10' (from ")


@pytest.mark.parametrize(("section", "key", "value", "allowed"), [
    ("redis", "embedded_port", 0, "an integer from 1 to 65535"),
    ("http", "port", 65536, "an integer from 0 to 65535"),
    ("http", "max_body_bytes", 1023, "an integer from 1024 to 16777216"),
    ("queue", "batch_size", 1001, "an integer from 1 to 1000"),
    ("queue", "block_timeout_seconds", 0.01, "a number from 0.05 to 30"),
    ("queue", "promote_interval_seconds", 61, "a number from 0.05 to 60"),
    ("queue", "max_job_bytes", 63, "an integer from 64 to 16777216"),
    ("queue", "max_redeliveries", 0, "an integer from 1 to 1000"),
    ("workers", "webhooks", 257, "an integer from 1 to 256"),
    ("processor", "latency_ms", -1, "an integer from 0 to 60000"),
    ("processor", "max_attempts", 101, "an integer from 1 to 100"),
    ("webhooks", "timeout_seconds", 0.05, "a number from 0.1 to 120"),
    ("webhooks", "max_attempts", 51, "an integer from 1 to 50"),
    ("webhooks", "disable_after_hours", 0, "a number from 0.001 to 8760"),
    ("webhooks", "secret_rotation_grace_hours", 721, "a number from 0 to 720"),
    ("webhooks", "simulate_failure_rate", 1.5, "a number from 0 to 1"),
    ("shutdown", "grace_seconds", 3601, "a number from 0 to 3600"),
])
def test_out_of_range_override(section: str, key: str, value: float, allowed: str) -> None:
    assert error_of(Path(), overrides={section: {key: value}},
                    override_sources={(section, key): "--flag"}) == (
        f"[{section}] {key}: expected {allowed}, got {value!r} (from --flag)")


def test_out_of_range_env_shows_what_was_written() -> None:
    assert error_of(Path(), env={"PAYFLOW_HTTP_PORT": "70000"}) == (
        "[http] port: expected an integer from 0 to 65535, got '70000' (from PAYFLOW_HTTP_PORT)")


def test_bad_value_in_file_is_an_error_even_if_env_overrides_it(tmp_path: Path) -> None:
    message = error_of(tmp_path, "[http]\nport = -1\n", env={"PAYFLOW_HTTP_PORT": "80"})
    assert message.startswith("[http] port: expected an integer from 0 to 65535, got -1 (from ")


@pytest.mark.parametrize("url", ["redis://h:6379/0", "rediss://:pw@h", "unix:///run/redis.sock",
                                 "embedded"])
def test_good_redis_urls(url: str) -> None:
    assert load_config(env={"PAYFLOW_REDIS_URL": url}).redis.url == url


@pytest.mark.parametrize("url", ["http://h", "localhost:6379", "redis://", "redis://h:99999",
                                 "unix://", "Embedded", ""])
def test_bad_redis_urls(url: str) -> None:
    assert error_of(Path(), env={"PAYFLOW_REDIS_URL": url}) == (
        "[redis] url: expected 'embedded' or a redis://, rediss:// or unix:// URL, "
        f"got {url!r} (from PAYFLOW_REDIS_URL)")


@pytest.mark.parametrize("url", ["memory://", "postgresql://u:p@db/payflow", "postgres:///pf"])
def test_good_store_urls(url: str) -> None:
    assert load_config(env={}, overrides={"store": {"url": url}}).store.url == url


@pytest.mark.parametrize("url", ["mysql://db/x", "sqlite:///x.db", "memory", ""])
def test_bad_store_urls(url: str) -> None:
    assert error_of(Path(), overrides={"store": {"url": url}}) == (
        "[store] url: expected memory:// or a postgresql:// or postgres:// URL, "
        f"got {url!r} (from command line)")


def test_bad_log_choices() -> None:
    assert error_of(Path(), env={"PAYFLOW_LOG_LEVEL": "verbose"}) == (
        "[log] level: expected one of 'debug', 'info', 'warning', 'error', got 'verbose' "
        "(from PAYFLOW_LOG_LEVEL)")
    assert error_of(Path(), env={"PAYFLOW_LOG_FORMAT": "xml"}) == (
        "[log] format: expected one of 'auto', 'console', 'json', got 'xml' "
        "(from PAYFLOW_LOG_FORMAT)")


@pytest.mark.parametrize("name", ["", "a b", "jobs{x}", "{jobs"])
def test_bad_queue_names(name: str) -> None:
    assert error_of(Path(), env={"PAYFLOW_QUEUE_PAYMENTS": name}) == (
        "[queue] payments: expected a non-empty name without '{', '}' or whitespace, "
        f"got {name!r} (from PAYFLOW_QUEUE_PAYMENTS)")


def test_duplicate_queue_names_blame_the_later_source(tmp_path: Path) -> None:
    assert error_of(Path(), env={"PAYFLOW_QUEUE_WEBHOOKS": "payflow_jobs"}) == (
        "[queue] webhooks: expected a queue name different from [queue] payments, "
        "got 'payflow_jobs' (from PAYFLOW_QUEUE_WEBHOOKS)")
    assert error_of(tmp_path, "[queue]\nwebhooks = 'q'\n",
                    env={"PAYFLOW_QUEUE_PAYMENTS": "q"}) == (
        "[queue] payments: expected a queue name different from [queue] webhooks, "
        "got 'q' (from PAYFLOW_QUEUE_PAYMENTS)")


def test_retry_schedule() -> None:
    config = load_config(env={"PAYFLOW_WEBHOOKS_RETRY_SCHEDULE": "0.5, 2,10"})
    assert config.webhooks.retry_schedule == (0.5, 2.0, 10.0)
    assert error_of(Path(), env={"PAYFLOW_WEBHOOKS_RETRY_SCHEDULE": "1,soon"}) == (
        "[webhooks] retry_schedule[1]: expected a number from 0.01 to 604800, got 'soon' "
        "(from PAYFLOW_WEBHOOKS_RETRY_SCHEDULE)")
    assert error_of(Path(), overrides={"webhooks": {"retry_schedule": []}}).startswith(
        "[webhooks] retry_schedule: expected a list of 1 to 49 numbers")
    assert error_of(Path(), overrides={"webhooks": {"retry_schedule": [1, True]}}).startswith(
        "[webhooks] retry_schedule[1]: expected a number")


def test_bad_cidr(tmp_path: Path) -> None:
    assert error_of(tmp_path, "[webhooks]\nallow_networks = ['10.0.0.0/8', '10.0.0.300/8']\n") \
        == ("[webhooks] allow_networks[1]: expected an IP network such as '10.0.0.0/8', "
            f"got '10.0.0.300/8' (from {tmp_path / 'payflow.toml'})")
    assert error_of(Path(), env={"PAYFLOW_WEBHOOKS_ALLOW_NETWORKS": "::1/129"}) == (
        "[webhooks] allow_networks[0]: expected an IP network such as '10.0.0.0/8', "
        "got '::1/129' (from PAYFLOW_WEBHOOKS_ALLOW_NETWORKS)")
    assert error_of(tmp_path, "[webhooks]\nallow_networks = '10.0.0.0/8'\n").startswith(
        "[webhooks] allow_networks: expected a list of IP networks such as ['10.0.0.0/8'], "
        "got '10.0.0.0/8' (from ")


def test_missing_explicit_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    assert error_of(Path(), path=missing) == f"config file not found: {str(missing)!r}"
    assert error_of(Path(), env={"PAYFLOW_CONFIG": str(missing)}) == (
        f"config file not found: {str(missing)!r} (from PAYFLOW_CONFIG)")


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    assert error_of(Path(), path=tmp_path).startswith(f"cannot read config file {str(tmp_path)!r}")


def test_toml_syntax_error(tmp_path: Path) -> None:
    message = error_of(tmp_path, "[http]\nport = = 1\n")
    assert message.startswith(f"config file {str(tmp_path / 'payflow.toml')!r}: invalid TOML: ")
    assert "line 2" in message


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b"[log]\nlevel = '\xe9'\n")
    with pytest.raises(ConfigError, match=r"invalid TOML"):
        load_config(path, env={})


# --- webhook endpoints ----------------------------------------------------------------------


def test_endpoints_from_toml(tmp_path: Path) -> None:
    path = write(tmp_path, """
[[webhooks.endpoints]]
url = "https://hooks.example.com/payflow"
secret = "whsec_1"
enabled_events = ["payment.succeeded"]
description = "prod"

[[webhooks.endpoints]]
url = "http://127.0.0.1:9000/"
""")
    assert load_config(path, env={}).webhooks.endpoints == (
        EndpointConfig(url="https://hooks.example.com/payflow", secret="whsec_1",
                       enabled_events=("payment.succeeded",), description="prod"),
        EndpointConfig(url="http://127.0.0.1:9000/", secret=None, enabled_events=("*",),
                       description=""),
    )


def test_endpoints_from_env_and_overrides() -> None:
    config = load_config(env={"PAYFLOW_WEBHOOKS_ENDPOINTS": "https://a.example/h, ,http://b:81"})
    assert config.webhooks.endpoints == (EndpointConfig(url="https://a.example/h"),
                                         EndpointConfig(url="http://b:81"))
    given = (EndpointConfig(url="https://c.example", secret="s"),)
    config = load_config(env={}, overrides={"webhooks": {"endpoints": given}})
    assert config.webhooks.endpoints == given


URL = urls.EXPECTED  # the one check the API, this file and the SSRF guard share


@pytest.mark.parametrize(("table", "message"), [
    ('url = "ftp://x.example"', f"endpoints[0].url: expected {URL}, got 'ftp://x.example'"),
    ('url = "https://"', f"endpoints[0].url: expected {URL}, got 'https://'"),
    ('url = "https://x:0/"', f"endpoints[0].url: expected {URL}, got 'https://x:0/'"),
    ('description = "no url"', f"endpoints[0].url: missing, expected {URL}"),
    ('url = "https://x"\nsecrett = "s"',
     "endpoints[0].secrett: unknown key, expected one of url, secret, enabled_events, "
     "description"),
    ('url = "https://x"\nsecret = ""',
     "endpoints[0].secret: expected a non-empty string (the HMAC signing secret), got ''"),
    ('url = "https://x"\nenabled_events = []',
     'endpoints[0].enabled_events: expected a non-empty list of event types, or ["*"] for all, '
     "got []"),
])
def test_bad_endpoint_in_file(tmp_path: Path, table: str, message: str) -> None:
    assert error_of(tmp_path, f"[[webhooks.endpoints]]\n{table}\n") == (
        f"[webhooks] {message} (from {tmp_path / 'payflow.toml'})")


def test_bad_endpoint_url_in_env() -> None:
    assert error_of(Path(), env={"PAYFLOW_WEBHOOKS_ENDPOINTS": "https://ok.example,localhost"}) \
        == (f"[webhooks] endpoints[1].url: expected {URL}, "
            "got 'localhost' (from PAYFLOW_WEBHOOKS_ENDPOINTS)")


# --- the shipped file -----------------------------------------------------------------------


def test_shipped_file_loads_and_matches_defaults() -> None:
    config = load_config(SHIPPED, env={})
    assert config.webhooks.allow_networks == ("127.0.0.0/8", "::1/128")
    dev_key = ApiKeyConfig(name="dev-test-key", secret="sk_test_payflow_dev_only_0000")
    assert config == Config(webhooks=WebhooksConfig(allow_networks=("127.0.0.0/8", "::1/128")),
                            api=ApiConfig(keys=(dev_key,)))


def test_shipped_file_documents_every_key() -> None:
    data = tomllib.loads(SHIPPED.read_text(encoding="utf-8"))
    expected = {
        section.name: {key.name for key in dataclasses.fields(getattr(Config(), section.name))}
        for section in dataclasses.fields(Config)
    }
    expected["webhooks"].discard("endpoints")  # shown as a commented-out example
    assert {section: set(table) for section, table in data.items()} == expected
    lines = SHIPPED.read_text(encoding="utf-8").splitlines()
    for index, line in enumerate(lines):
        if re.match(r"^[a-z_]+ = ", line) and not lines[index - 1].startswith(
                ("[[", "name = ")):  # inside an array-of-tables entry, documented above it
            assert lines[index - 1].startswith("# "), f"no comment above {line!r}"
    assert "# [[webhooks.endpoints]]" in lines


# --- summary and helpers --------------------------------------------------------------------


def test_config_summary_masks_secrets() -> None:
    config = Config(
        redis=RedisConfig(url="redis://user:hunter2@cache:6379/0"),
        queue=QueueConfig(),
        webhooks=WebhooksConfig(endpoints=(
            EndpointConfig(url="https://a.example", secret="whsec_topsecret"),
            EndpointConfig(url="https://b.example"),
        )),
        store=dataclasses.replace(Config().store,
                                  url="postgresql://pf:s3cret@db/pf?sslmode=require&password=x",
                                  secret_key="sealing-passphrase-42"),
    )
    summary = config_summary(config)
    text = json.dumps(summary)
    for secret in ("hunter2", "whsec_topsecret", "s3cret", "password=x", "sealing-passphrase"):
        assert secret not in text
    assert summary["redis"] == {"url": "redis://user:***@cache:6379/0", "embedded_port": 6379}
    assert summary["store"] == {"url": "postgresql://pf:***@db/pf?sslmode=require&password=***",
                                "secret_key": "***", "memory_max_payments": 100_000}
    webhooks = summary["webhooks"]
    assert isinstance(webhooks, dict)
    assert webhooks["endpoints"] == [
        {"url": "https://a.example", "secret": "***", "enabled_events": ["*"], "description": ""},
        {"url": "https://b.example", "secret": None, "enabled_events": ["*"], "description": ""},
    ]
    assert summary["http"] == {"host": "127.0.0.1", "port": 8080, "max_body_bytes": 65536,
                               "header_timeout_seconds": 10.0, "body_timeout_seconds": 30.0,
                               "keepalive_seconds": 75.0, "max_connections": 1000}
    assert set(summary) == {f.name for f in dataclasses.fields(Config)}


def test_mask_url() -> None:
    assert mask_url("redis://pw@h:1", lone_user_is_secret=True) == "redis://***@h:1"
    assert mask_url("postgresql://user@h/db") == "postgresql://user@h/db"
    assert mask_url("embedded") == "embedded"
    assert mask_url("memory://") == "memory://"


@pytest.mark.parametrize(("text", "value"), [("true", True), ("YES", True), ("1", True),
                                             ("false", False), ("no", False), ("0", False)])
def test_bool_rule_text(text: str, value: bool) -> None:
    assert BoolRule().text(text) is value


def test_bool_rule_rejects() -> None:
    with pytest.raises(Invalid, match=r"got 'maybe'"):
        BoolRule().text("maybe")
    with pytest.raises(Invalid, match=r"got 1$"):
        BoolRule().native(1)


def test_daemon_section(tmp_path: Path) -> None:
    config = load_config(None, env={"PAYFLOW_DAEMON_ID": "pod-7", "PAYFLOW_CONFIG": ""})
    assert config.daemon.id == "pod-7"
    assert config.daemon.heartbeat_ttl_seconds > config.daemon.heartbeat_seconds
    with pytest.raises(ConfigError, match=r"\[daemon\] id: expected empty, or 1 to 64"):
        load_config(None, env={"PAYFLOW_DAEMON_ID": "a b"})
    with pytest.raises(ConfigError, match=r"\[daemon\] heartbeat_ttl_seconds: expected a number "
                                          r"greater than \[daemon\] heartbeat_seconds"):
        load_config(None, env={"PAYFLOW_DAEMON_HEARTBEAT_TTL_SECONDS": "1"})


def test_api_keys_from_file_and_env(tmp_path: Path) -> None:
    keys = "ci:sk_live_aaaaaaaaaaaaaaaa, b:bbbbbbbbbbbbbbbbbbbb"
    config = load_config(None, env={"PAYFLOW_CONFIG": "", "PAYFLOW_API_KEYS": keys})
    assert [k.name for k in config.api.keys] == ["ci", "b"]
    assert config.api.keys[0].secret == "sk_live_aaaaaaaaaaaaaaaa"
    assert "aaaa" not in repr(config.api.keys[0])  # the secret stays out of reprs and logs
    for value, message in [("nocolon", "expected name:secret"),
                           ("k:short", "16 to 256 printable characters"),
                           ("a b:xxxxxxxxxxxxxxxxxxxx", "1 to 64 letters"),
                           ("k:xxxxxxxxxxxxxxxxxxxx,k:yyyyyyyyyyyyyyyyyyyy", "used by no other")]:
        with pytest.raises(ConfigError, match=message) as info:
            load_config(None, env={"PAYFLOW_CONFIG": "", "PAYFLOW_API_KEYS": value})
        assert "PAYFLOW_API_KEYS" in str(info.value)
        assert "xxxxxxxx" not in str(info.value)  # never echo a secret


def test_event_loop_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    import uvloop

    from payflow.cli.main import event_loop_factory

    assert event_loop_factory("asyncio") is None
    assert event_loop_factory("auto") is uvloop.new_event_loop
    assert event_loop_factory("uvloop") is uvloop.new_event_loop
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as if it were not installed
    assert event_loop_factory("auto") is None
    with pytest.raises(ConfigError, match=r"uvloop is not installed \(pip install"):
        event_loop_factory("uvloop")


def test_the_client_commands_api_key_variable_is_not_a_setting() -> None:
    # `export PAYFLOW_API_KEY=…` for payflow pay / listen must not stop payflow serve
    config = load_config(None, env={"PAYFLOW_API_KEY": "sk_client_0123456789abcdef"})
    assert config.api.keys == ()
