"""Static checks of docker-compose.yml, Dockerfile and .dockerignore.

Nothing here needs a Docker engine: the files are parsed and cross-checked
against each other, against deploy/payflow.compose.toml (loaded with
payflow.config.load_config and the environment the compose file sets) and
against payflow.toml, so they cannot drift apart.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from payflow.config import Config, load_config

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
CONFIG_FILE = REPO / "payflow.toml"  # the development config: never mounted by compose
COMPOSE_CONFIG_FILE = REPO / "deploy" / "payflow.compose.toml"
PYPROJECT = REPO / "pyproject.toml"

ENV_PREFIX = "PAYFLOW_"
APP_SHUTDOWN_GRACE_S = 10.0
REPLICAS = 2
POSTGRES_DATA = "/var/lib/postgresql/data"
# What an operator would put in .env; interpolated into the compose file by the tests.
OPERATOR_ENV = {"PAYFLOW_API_KEYS": "ops:0123456789abcdef0123456789abcdef"}
# PAYFLOW_* variables that are not [section] keys (read by load_config itself).
NON_KEY_ENV = {"PAYFLOW_CONFIG"}


# --------------------------------------------------------------------------- helpers


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper-cased, e.g. "FROM"
    args: str


def parse_dockerfile(text: str) -> list[Instruction]:
    """Split a Dockerfile into instructions (comments dropped, continuations joined)."""
    instructions: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        line = (pending + stripped).strip()
        pending = ""
        if not line:
            continue
        keyword, _, args = line.partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip()))
    if pending.strip():
        keyword, _, args = pending.strip().partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip()))
    return instructions


def exec_form(instr: Instruction) -> list[str]:
    """The JSON (exec form) argument list of CMD/ENTRYPOINT/etc."""
    value = json.loads(instr.args)
    assert isinstance(value, list), f"{instr.keyword} must use the JSON exec form"
    assert all(isinstance(v, str) for v in value), f"{instr.keyword}: non-string entry"
    return [str(v) for v in value]


def as_mapping(value: object, what: str) -> dict[str, Any]:
    assert isinstance(value, dict), f"{what} must be a mapping, got {type(value).__name__}"
    return {str(k): v for k, v in value.items()}


def normalise_environment(value: object) -> dict[str, str | None]:
    """Compose allows `environment` as a mapping or as a list of KEY=VALUE strings."""
    if value is None:
        return {}
    if isinstance(value, list):
        env: dict[str, str | None] = {}
        for item in value:
            assert isinstance(item, str), f"environment entry {item!r} is not a string"
            key, sep, val = item.partition("=")
            env[key] = val if sep else None
        return env
    mapping = as_mapping(value, "environment")
    return {k: None if v is None else _scalar_str(v) for k, v in mapping.items()}


def _scalar_str(value: object) -> str:
    # YAML turns unquoted true/8080 into bool/int; Compose passes them as strings.
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def as_command_tokens(value: object) -> list[str]:
    if isinstance(value, str):
        return shlex.split(value)
    assert isinstance(value, list), f"command must be a string or a list, got {value!r}"
    return [_scalar_str(v) for v in value]


def option_value(tokens: list[str], option: str) -> str | None:
    """Value of `--opt value` or `--opt=value` in an argv list."""
    for i, tok in enumerate(tokens):
        if tok == option and i + 1 < len(tokens):
            return tokens[i + 1]
        if tok.startswith(option + "="):
            return tok.split("=", 1)[1]
    return None


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    read_only: bool


def parse_volume(entry: object) -> Mount:
    """Short (`src:dst[:mode]`) or long (`{source, target, read_only}`) volume syntax."""
    if isinstance(entry, str):
        parts = entry.split(":")
        if len(parts) == 1:
            return Mount("", parts[0], False)
        modes = set(parts[2].split(",")) if len(parts) > 2 else set()
        return Mount(parts[0], parts[1], "ro" in modes)
    mapping = as_mapping(entry, "volume")
    return Mount(
        str(mapping.get("source", "")),
        str(mapping["target"]),
        bool(mapping.get("read_only", False)),
    )


def container_ports(entry: object) -> list[int]:
    """Container-side port(s) of one `ports:` entry, short or long syntax."""
    if isinstance(entry, int):
        return [entry]
    if isinstance(entry, str):
        spec = entry.split("/", 1)[0]  # drop /tcp, /udp
        target = spec.rsplit(":", 1)[-1]
        lo, _, hi = target.partition("-")
        return list(range(int(lo), int(hi or lo) + 1))
    mapping = as_mapping(entry, "port")
    return [int(mapping["target"])]


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)")
_DURATION_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration_seconds(value: object) -> float:
    """Compose duration (`30s`, `1m30s`, `1500ms`) in seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    assert isinstance(value, str), f"bad duration {value!r}"
    text = value.strip()
    parts = _DURATION_PART.findall(text)
    assert parts, f"bad duration {value!r}"
    assert "".join(n + u for n, u in parts) == text, f"bad duration {value!r}"
    return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)


def env_to_toml_candidates(name: str) -> list[tuple[str, str]]:
    """PAYFLOW_HTTP_MAX_BODY_BYTES -> [("http", "max_body_bytes"), ("http_max", ...), ...]."""
    words = name.removeprefix(ENV_PREFIX).lower().split("_")
    return [("_".join(words[:i]), "_".join(words[i:])) for i in range(1, len(words))]


def is_root_user(user: str) -> bool:
    name = user.split(":", 1)[0].strip()
    return name in {"root", "0", ""}


@dataclass(frozen=True)
class Published:
    host_ip: str  # "" = all interfaces
    host_port: str  # "" = an ephemeral port
    container_port: int


def published_ports(entry: object) -> list[Published]:
    """One `ports:` entry, short (`[ip:][host:]container[/proto]`) or long syntax."""
    if isinstance(entry, int):
        return [Published("", "", entry)]
    if isinstance(entry, str):
        spec = entry.split("/", 1)[0]
        host_ip = ""
        if spec.startswith("["):  # [::1]:8080:8080
            host_ip, _, spec = spec[1:].partition("]:")
        parts = spec.split(":")
        if len(parts) == 3:
            host_ip, parts = parts[0], parts[1:]
        host_port = parts[0] if len(parts) == 2 else ""
        return [Published(host_ip, host_port, port) for port in container_ports(parts[-1])]
    mapping = as_mapping(entry, "port")
    return [
        Published(
            str(mapping.get("host_ip", "")),
            str(mapping.get("published", "")),
            int(mapping["target"]),
        )
    ]


class MissingVariable(Exception):
    """`${VAR:?message}` / `${VAR?message}` with VAR unset: Compose refuses to run."""


_INTERPOLATION = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*))"
)


def interpolate(text: str, environ: Mapping[str, str]) -> str:
    """Compose's variable interpolation of one string value (no nesting)."""

    def replace(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["braced"] or match["named"]
        value = environ.get(name)
        op, arg = match["op"] or "", match["arg"] or ""
        missing = value is None or (op.startswith(":") and value == "")
        if op.endswith("-"):
            return arg if missing else str(value)
        if op.endswith("?"):
            if missing:
                raise MissingVariable(f"{name}: {arg}")
            return str(value)
        if op.endswith("+"):
            return "" if missing else arg
        return value or ""

    return _INTERPOLATION.sub(replace, text)


def interpolate_tree(value: object, environ: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        return interpolate(value, environ)
    if isinstance(value, list):
        return [interpolate_tree(v, environ) for v in value]
    if isinstance(value, dict):
        return {k: interpolate_tree(v, environ) for k, v in value.items()}
    return value


def load_compose(environ: Mapping[str, str]) -> dict[str, Any]:
    """docker-compose.yml as Compose sees it with `environ`: YAML anchors and merge keys are
    resolved by the YAML loader, then ${...} is interpolated."""
    raw = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    return as_mapping(interpolate_tree(raw, environ), "compose file")


def healthcheck_tokens(service: dict[str, Any], what: str) -> list[str]:
    """The healthcheck command as an argv list (CMD, CMD-SHELL or a plain string)."""
    health = as_mapping(service.get("healthcheck"), f"{what} healthcheck")
    test = health.get("test")
    if isinstance(test, list):
        if test[:1] == ["CMD-SHELL"]:
            return shlex.split(" ".join(str(t) for t in test[1:]))
        return [str(t) for t in (test[1:] if test[:1] == ["CMD"] else test)]
    return shlex.split(str(test))


def config_mount(service: dict[str, Any], target: str) -> Mount:
    mounts = [parse_volume(v) for v in service.get("volumes", [])]
    matching = [m for m in mounts if m.target == target]
    assert matching, f"nothing mounted at {target}: {mounts}"
    return matching[0]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    assert COMPOSE_FILE.is_file(), f"{COMPOSE_FILE} is missing"
    return load_compose(OPERATOR_ENV)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return as_mapping(compose.get("services"), "services")


@pytest.fixture(scope="module")
def redis_svc(services: dict[str, Any]) -> dict[str, Any]:
    assert "redis" in services, "compose file has no `redis` service"
    return as_mapping(services["redis"], "services.redis")


@pytest.fixture(scope="module")
def postgres_svc(services: dict[str, Any]) -> dict[str, Any]:
    assert "postgres" in services, "compose file has no `postgres` service"
    return as_mapping(services["postgres"], "services.postgres")


@pytest.fixture(scope="module")
def postgres_env(postgres_svc: dict[str, Any]) -> dict[str, str | None]:
    return normalise_environment(postgres_svc.get("environment"))


@pytest.fixture(scope="module")
def replicas(services: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The PayFlow services: those built from this repository."""
    found = {
        name: as_mapping(svc, f"services.{name}")
        for name, svc in services.items()
        if isinstance(svc, dict) and "build" in svc
    }
    assert len(found) == REPLICAS, f"expected {REPLICAS} PayFlow replicas, got {sorted(found)}"
    return found


@pytest.fixture(scope="module")
def replica_envs(replicas: dict[str, dict[str, Any]]) -> dict[str, dict[str, str | None]]:
    return {name: normalise_environment(svc.get("environment")) for name, svc in replicas.items()}


@pytest.fixture(scope="module")
def replica_configs(
    replicas: dict[str, dict[str, Any]],
    replica_envs: dict[str, dict[str, str | None]],
    docker_cmd: list[str],
) -> dict[str, Config]:
    """What each replica runs with: the mounted config file plus its environment."""
    config_path = option_value(docker_cmd, "--config")
    assert config_path, f"Dockerfile CMD passes no --config: {docker_cmd}"
    configs: dict[str, Config] = {}
    for name, svc in replicas.items():
        env = {k: v for k, v in replica_envs[name].items() if v is not None}
        configs[name] = load_config(REPO / config_mount(svc, config_path).source, env=env)
    return configs


@pytest.fixture(scope="module")
def dockerfile() -> list[Instruction]:
    assert DOCKERFILE.is_file(), f"{DOCKERFILE} is missing"
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def docker_cmd(dockerfile: list[Instruction]) -> list[str]:
    cmds = [i for i in dockerfile if i.keyword == "CMD"]
    assert cmds, "Dockerfile has no CMD"
    return exec_form(cmds[-1])  # the last CMD wins


# --------------------------------------------------------------------------- compose


def test_compose_has_no_obsolete_version_key(compose: dict[str, Any]) -> None:
    assert "version" not in compose


def test_redis_image_is_redis_7(redis_svc: dict[str, Any]) -> None:
    image = str(redis_svc.get("image", ""))
    name, _, tag = image.rpartition(":")
    assert name in {"redis", "docker.io/redis", "docker.io/library/redis", "library/redis"}
    assert re.fullmatch(r"7(\.\d+){0,2}(-[a-z0-9.]+)?", tag), f"not a Redis 7 tag: {image!r}"


def test_redis_persistence_and_eviction(redis_svc: dict[str, Any]) -> None:
    tokens = as_command_tokens(redis_svc.get("command"))
    assert tokens, "redis has no command"
    assert tokens[0] == "redis-server"
    assert option_value(tokens, "--appendonly") == "yes"
    # Queues must never be silently evicted under memory pressure.
    assert option_value(tokens, "--maxmemory-policy") == "noeviction"


def test_redis_data_volume_and_healthcheck(
    compose: dict[str, Any], redis_svc: dict[str, Any]
) -> None:
    mounts = [parse_volume(v) for v in redis_svc.get("volumes", [])]
    data = [m for m in mounts if m.target == "/data"]
    assert data, "redis has no volume at /data"
    assert data[0].source in as_mapping(compose.get("volumes"), "top-level volumes")

    health = as_mapping(redis_svc.get("healthcheck"), "redis healthcheck")
    test = health.get("test")
    text = " ".join(test) if isinstance(test, list) else str(test)
    assert "redis-cli" in text
    assert "ping" in text


def test_postgres_image_is_postgres_16(postgres_svc: dict[str, Any]) -> None:
    image = str(postgres_svc.get("image", ""))
    name, _, tag = image.rpartition(":")
    assert name in {
        "postgres",
        "docker.io/postgres",
        "docker.io/library/postgres",
        "library/postgres",
    }
    assert re.fullmatch(r"16(\.\d+){0,2}(-[a-z0-9.]+)?", tag), f"not a PostgreSQL 16 tag: {image!r}"


def test_postgres_data_volume_and_healthcheck(
    compose: dict[str, Any], postgres_svc: dict[str, Any], postgres_env: dict[str, str | None]
) -> None:
    mounts = [parse_volume(v) for v in postgres_svc.get("volumes", [])]
    data = [m for m in mounts if m.target == POSTGRES_DATA]
    assert data, f"postgres has no volume at {POSTGRES_DATA}"
    assert data[0].source in as_mapping(compose.get("volumes"), "top-level volumes"), (
        "the postgres data volume must be a named volume"
    )

    tokens = healthcheck_tokens(postgres_svc, "postgres")
    assert tokens[:1] == ["pg_isready"], tokens
    if option_value(tokens, "-U") is not None:
        assert option_value(tokens, "-U") == postgres_env.get("POSTGRES_USER")
    if option_value(tokens, "-d") is not None:
        assert option_value(tokens, "-d") == postgres_env.get("POSTGRES_DB")


def test_postgres_credentials() -> None:
    raw = as_mapping(yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8")), "compose file")
    env = normalise_environment(as_mapping(raw["services"], "services")["postgres"]["environment"])
    assert env.get("POSTGRES_USER") and env.get("POSTGRES_DB")
    password = env.get("POSTGRES_PASSWORD") or ""
    # From the operator's environment, with a default for local use.
    assert re.fullmatch(r"\$\{POSTGRES_PASSWORD:?-[^}]+\}", password), password
    assert interpolate(password, {}), "the local default password is empty"
    assert interpolate(password, {"POSTGRES_PASSWORD": "pw0123"}) == "pw0123"


def test_two_replicas_of_one_image(
    replicas: dict[str, dict[str, Any]], replica_envs: dict[str, dict[str, str | None]]
) -> None:
    for name, svc in replicas.items():
        build = svc.get("build")
        context = as_mapping(build, "build").get("context") if isinstance(build, dict) else build
        assert context in {".", "./"}, f"{name} must build from the repo root, got {build!r}"
    # Same image and settings (one YAML anchor); only ports and the daemon id may differ.
    per_replica = {"ports", "environment", "container_name", "hostname"}
    shared = [{k: v for k, v in svc.items() if k not in per_replica} for svc in replicas.values()]
    assert all(s == shared[0] for s in shared), "the replicas differ beyond ports/environment"
    assert shared[0].get("image"), "give the replicas one image name so it is built once"
    envs = [
        {k: v for k, v in env.items() if k != "PAYFLOW_DAEMON_ID"} for env in replica_envs.values()
    ]
    assert all(e == envs[0] for e in envs), "the replicas' environments differ"
    ids = [env.get("PAYFLOW_DAEMON_ID") or "" for env in replica_envs.values()]
    named = [i for i in ids if i]
    assert len(set(named)) == len(named), f"two replicas share a daemon id: {ids}"


def test_replicas_depend_on_healthy_redis_and_postgres(
    replicas: dict[str, dict[str, Any]],
) -> None:
    for name, svc in replicas.items():
        depends = as_mapping(svc.get("depends_on"), f"{name}.depends_on (long form)")
        for needed in ("redis", "postgres"):
            dep = as_mapping(depends.get(needed), f"{name}.depends_on.{needed}")
            assert dep.get("condition") == "service_healthy", (name, needed)


def test_ports_published_on_loopback_only(
    services: dict[str, Any], replicas: dict[str, dict[str, Any]]
) -> None:
    for name, svc in services.items():
        for entry in as_mapping(svc, name).get("ports", []):
            for port in published_ports(entry):
                assert port.host_ip == "127.0.0.1", f"{name} publishes {entry!r} beyond loopback"
                assert port.host_port, f"{name}: {entry!r} has no fixed host port"
    assert not services["redis"].get("ports"), "redis must not be published"
    assert not services["postgres"].get("ports"), "postgres must not be published"
    host_ports = [
        p.host_port
        for svc in replicas.values()
        for entry in svc.get("ports", [])
        for p in published_ports(entry)
    ]
    assert len(host_ports) >= REPLICAS, f"every replica must publish its API: {host_ports}"
    assert len(set(host_ports)) == len(host_ports), f"host ports clash: {host_ports}"


def test_published_port_matches_config_and_expose(
    replicas: dict[str, dict[str, Any]],
    replica_envs: dict[str, dict[str, str | None]],
    replica_configs: dict[str, Config],
    dockerfile: list[Instruction],
) -> None:
    exposed = {
        int(tok.split("/", 1)[0])
        for instr in dockerfile
        if instr.keyword == "EXPOSE"
        for tok in instr.args.split()
    }
    for name, svc in replicas.items():
        port = replica_configs[name].http.port
        published = [p.container_port for e in svc.get("ports", []) for p in published_ports(e)]
        assert published == [port], f"{name}: container port {port} vs published {published}"
        assert port in exposed, f"Dockerfile EXPOSE {sorted(exposed)} lacks {port}"
        # The image's HEALTHCHECK probes PAYFLOW_HTTP_PORT (default 8080).
        assert int(replica_envs[name].get("PAYFLOW_HTTP_PORT") or 8080) == port


def test_replicas_use_the_compose_services(
    services: dict[str, Any], replica_configs: dict[str, Config]
) -> None:
    for name, cfg in replica_configs.items():
        redis_url = urlsplit(cfg.redis.url)
        assert redis_url.scheme == "redis", f"{name}: {cfg.redis.url}"
        assert redis_url.hostname == "redis" and "redis" in services, cfg.redis.url
        assert cfg.http.host == "0.0.0.0", f"{name} must listen on all container interfaces"
        assert cfg.log.format == "json"


def test_store_url_points_at_postgres(
    services: dict[str, Any],
    postgres_env: dict[str, str | None],
    replica_configs: dict[str, Config],
) -> None:
    for name, cfg in replica_configs.items():
        url = urlsplit(cfg.store.url)
        assert url.scheme in {"postgresql", "postgres"}, f"{name}: store is {url.scheme}://"
        assert url.hostname == "postgres" and "postgres" in services
        assert url.port in {None, 5432}
        assert url.username == postgres_env["POSTGRES_USER"]
        assert url.password == postgres_env["POSTGRES_PASSWORD"]
        assert url.path == "/" + str(postgres_env["POSTGRES_DB"])


def test_store_password_follows_postgres_password() -> None:
    compose = load_compose({**OPERATOR_ENV, "POSTGRES_PASSWORD": "Op3rat0rChosen"})
    services = as_mapping(compose["services"], "services")
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == "Op3rat0rChosen"
    for name, svc in services.items():
        if "build" in svc:
            env = normalise_environment(svc.get("environment"))
            url = urlsplit(env.get("PAYFLOW_STORE_URL") or "")
            assert url.password == "Op3rat0rChosen", name


def test_config_mount_matches_dockerfile_cmd(
    replicas: dict[str, dict[str, Any]],
    replica_envs: dict[str, dict[str, str | None]],
    docker_cmd: list[str],
) -> None:
    config_path = option_value(docker_cmd, "--config")
    assert config_path, f"Dockerfile CMD passes no --config: {docker_cmd}"
    for name, svc in replicas.items():
        mount = config_mount(svc, config_path)
        assert (REPO / mount.source).resolve() == COMPOSE_CONFIG_FILE, mount
        assert mount.read_only, "the config must be mounted read-only"
        # So `docker compose exec <replica> payflow migrate` etc. read the same file.
        assert replica_envs[name].get("PAYFLOW_CONFIG") in {None, config_path}
    assert COMPOSE_CONFIG_FILE.is_file(), (
        f"{COMPOSE_CONFIG_FILE} is missing (Docker would mount an empty directory instead)"
    )


def test_compose_config_loads_and_has_no_api_key() -> None:
    load_config(COMPOSE_CONFIG_FILE, env={})  # every key is known and valid on its own
    with COMPOSE_CONFIG_FILE.open("rb") as fh:
        data = tomllib.load(fh)
    assert "keys" not in data.get("api", {}), "API keys belong in PAYFLOW_API_KEYS, not the file"
    assert data.get("redis", {}).get("url") != "embedded"


def test_api_keys_come_from_the_environment(
    replica_envs: dict[str, dict[str, str | None]], replica_configs: dict[str, Config]
) -> None:
    with pytest.raises(MissingVariable, match="PAYFLOW_API_KEYS"):
        load_compose({})  # Compose refuses to run without them
    expected = [k.partition(":")[::2] for k in OPERATOR_ENV["PAYFLOW_API_KEYS"].split(",")]
    for name, env in replica_envs.items():
        assert env.get("PAYFLOW_API_KEYS") == OPERATOR_ENV["PAYFLOW_API_KEYS"], name
        keys = [(k.name, k.secret) for k in replica_configs[name].api.keys]
        assert keys == expected, name


def test_no_test_api_key_in_compose_files() -> None:
    with CONFIG_FILE.open("rb") as fh:
        dev_keys = tomllib.load(fh).get("api", {}).get("keys", [])
    secrets = {str(k["secret"]) for k in dev_keys if "secret" in k}
    for path in (COMPOSE_FILE, COMPOSE_CONFIG_FILE):
        text = path.read_text(encoding="utf-8")
        for secret in secrets:
            assert secret not in text, f"{path.name} contains payflow.toml's test API key"
        assert not re.search(r"sk_test_\w+", text), f"{path.name} contains a test key"


def test_replica_env_names_map_to_config_keys(
    replica_envs: dict[str, dict[str, str | None]],
) -> None:
    defaults = Config()
    known = {
        section.name: {key.name for key in fields(getattr(defaults, section.name))}
        for section in fields(defaults)
    }
    for name, env in replica_envs.items():
        assert env, f"{name} sets no environment"
        for var in env:
            assert var.startswith(ENV_PREFIX), f"{var} does not start with {ENV_PREFIX}"
            if var in NON_KEY_ENV:
                continue
            hits = [(s, k) for s, k in env_to_toml_candidates(var) if k in known.get(s, ())]
            # load_config ignores a PAYFLOW_* name that matches no section: catch typos here.
            assert hits, f"{name}: {var} maps to no [section] key of payflow.config"


def test_stop_grace_period_exceeds_app_grace(
    replicas: dict[str, dict[str, Any]], replica_configs: dict[str, Config]
) -> None:
    for name, svc in replicas.items():
        assert "stop_grace_period" in svc, name
        grace = max(APP_SHUTDOWN_GRACE_S, replica_configs[name].shutdown.grace_seconds)
        assert duration_seconds(svc["stop_grace_period"]) > grace, name
        assert svc.get("stop_signal", "SIGTERM") in {"SIGTERM", "TERM", 15}


# --------------------------------------------------------------------------- Dockerfile


def test_dockerfile_base_image_is_python_311(dockerfile: list[Instruction]) -> None:
    froms = [i for i in dockerfile if i.keyword == "FROM"]
    assert froms, "Dockerfile has no FROM"
    stages: set[str] = set()
    for instr in froms:
        words = [w for w in instr.args.split() if not w.startswith("--")]
        image = words[0]
        if len(words) >= 3 and words[1].lower() == "as":
            stages.add(words[2].lower())
        if image.lower() in stages:
            continue  # built on an earlier stage
        assert re.match(r"(docker\.io/(library/)?)?python:3\.11([.-]|$)", image), image


def test_dockerfile_runs_as_non_root(dockerfile: list[Instruction]) -> None:
    users = [i.args for i in dockerfile if i.keyword == "USER"]
    assert users, "Dockerfile never switches USER"
    assert not is_root_user(users[-1]), f"final USER is root: {users[-1]!r}"


def test_dockerfile_entrypoint_and_cmd(
    dockerfile: list[Instruction], docker_cmd: list[str]
) -> None:
    entrypoints = [i for i in dockerfile if i.keyword == "ENTRYPOINT"]
    assert entrypoints, "Dockerfile has no ENTRYPOINT"
    assert exec_form(entrypoints[-1]) == ["payflow"]
    assert docker_cmd[:1] == ["serve"]
    assert option_value(docker_cmd, "--host") == "0.0.0.0"


def test_dockerfile_pip_installs_project(dockerfile: list[Instruction]) -> None:
    runs = [i.args for i in dockerfile if i.keyword == "RUN"]
    commands = [shlex.split(c) for run in runs for c in re.split(r"&&|;|\|\|", run)]
    installs = [c for c in commands if "pip" in c[:4] and "install" in c
                and any(arg == "." or arg.startswith(".[") for arg in c)]
    assert installs, f"no `pip install .` among RUN commands: {runs}"
    # the image runs on uvloop: the fast extra
    assert any(arg == ".[fast]" for c in installs for arg in c), installs


def test_dockerfile_copies_what_the_build_needs(dockerfile: list[Instruction]) -> None:
    with PYPROJECT.open("rb") as fh:
        readme = tomllib.load(fh)["project"].get("readme")
    copied = {
        Path(src).as_posix().rstrip("/")
        for instr in dockerfile
        if instr.keyword in {"COPY", "ADD"}
        for src in [w for w in instr.args.split() if not w.startswith("--")][:-1]
    }
    needed = {"pyproject.toml", "src"} | ({readme} if isinstance(readme, str) else set())
    assert needed <= copied, f"Dockerfile does not COPY {sorted(needed - copied)}"


def test_dockerfile_healthcheck_uses_healthz(dockerfile: list[Instruction]) -> None:
    checks = [i.args for i in dockerfile if i.keyword == "HEALTHCHECK"]
    assert checks, "Dockerfile has no HEALTHCHECK"
    assert "/healthz" in checks[-1]
    assert "curl" not in checks[-1], "python:3.11-slim has no curl"


def test_dockerignore_keeps_build_inputs() -> None:
    assert DOCKERIGNORE.is_file(), f"{DOCKERIGNORE} is missing"
    patterns = [
        line.strip().lstrip("/")
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith(("#", "!"))
    ]
    assert ".git" in patterns
    for needed in ("pyproject.toml", "README.md", "src", "src/payflow/__init__.py"):
        excluded = [p for p in patterns if fnmatch.fnmatchcase(needed, p)]
        assert not excluded, f".dockerignore excludes {needed} via {excluded}"
