"""Static checks of docker-compose.yml, Dockerfile and .dockerignore.

Nothing here needs a Docker engine: the files are parsed and cross-checked
against each other and against payflow.toml, so they cannot drift apart.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
CONFIG_FILE = REPO / "payflow.toml"
PYPROJECT = REPO / "pyproject.toml"

ENV_PREFIX = "PAYFLOW_"
APP_SHUTDOWN_GRACE_S = 10.0


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


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    assert COMPOSE_FILE.is_file(), f"{COMPOSE_FILE} is missing"
    return as_mapping(yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8")), "compose file")


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return as_mapping(compose.get("services"), "services")


@pytest.fixture(scope="module")
def redis_svc(services: dict[str, Any]) -> dict[str, Any]:
    assert "redis" in services, "compose file has no `redis` service"
    return as_mapping(services["redis"], "services.redis")


@pytest.fixture(scope="module")
def payflow_svc(services: dict[str, Any]) -> dict[str, Any]:
    assert "payflow" in services, "compose file has no `payflow` service"
    return as_mapping(services["payflow"], "services.payflow")


@pytest.fixture(scope="module")
def payflow_env(payflow_svc: dict[str, Any]) -> dict[str, str | None]:
    return normalise_environment(payflow_svc.get("environment"))


@pytest.fixture(scope="module")
def dockerfile() -> list[Instruction]:
    assert DOCKERFILE.is_file(), f"{DOCKERFILE} is missing"
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def docker_cmd(dockerfile: list[Instruction]) -> list[str]:
    cmds = [i for i in dockerfile if i.keyword == "CMD"]
    assert cmds, "Dockerfile has no CMD"
    return exec_form(cmds[-1])  # the last CMD wins


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    assert CONFIG_FILE.is_file(), (
        f"{CONFIG_FILE} is missing; docker-compose.yml bind-mounts it "
        "(Docker would create an empty directory in its place)"
    )
    with CONFIG_FILE.open("rb") as fh:
        return tomllib.load(fh)


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


def test_payflow_build_and_dependency(payflow_svc: dict[str, Any]) -> None:
    build = payflow_svc.get("build")
    context = as_mapping(build, "build").get("context") if isinstance(build, dict) else build
    assert context in {".", "./"}, f"payflow must build from the repo root, got {build!r}"

    depends = as_mapping(payflow_svc.get("depends_on"), "payflow.depends_on (long form)")
    redis_dep = as_mapping(depends.get("redis"), "payflow.depends_on.redis")
    assert redis_dep.get("condition") == "service_healthy"


def test_payflow_environment(services: dict[str, Any], payflow_env: dict[str, str | None]) -> None:
    url = payflow_env.get("PAYFLOW_REDIS_URL")
    assert url, "PAYFLOW_REDIS_URL must be set (overrides the toml's embedded Redis)"
    parts = urlsplit(url)
    assert parts.scheme == "redis", url
    assert parts.hostname == "redis", url
    assert parts.hostname in services, "the Redis URL host must be a compose service"
    assert payflow_env.get("PAYFLOW_HTTP_HOST") == "0.0.0.0"


def test_payflow_config_mount_matches_dockerfile_cmd(
    payflow_svc: dict[str, Any], docker_cmd: list[str]
) -> None:
    config_path = option_value(docker_cmd, "--config")
    assert config_path, f"Dockerfile CMD passes no --config: {docker_cmd}"
    mounts = [parse_volume(v) for v in payflow_svc.get("volumes", [])]
    matching = [m for m in mounts if m.target == config_path]
    assert matching, f"nothing mounted at {config_path}: {mounts}"
    mount = matching[0]
    assert Path(mount.source) == Path("payflow.toml"), mount
    assert mount.read_only, "the config must be mounted read-only"


def test_published_port_matches_env_and_expose(
    payflow_svc: dict[str, Any],
    payflow_env: dict[str, str | None],
    dockerfile: list[Instruction],
) -> None:
    port_env = payflow_env.get("PAYFLOW_HTTP_PORT")
    assert port_env is not None, "PAYFLOW_HTTP_PORT must be set"
    port = int(port_env)

    published = [p for entry in payflow_svc.get("ports", []) for p in container_ports(entry)]
    assert port in published, f"container port {port} not published: {published}"

    exposed = {
        int(tok.split("/", 1)[0])
        for instr in dockerfile
        if instr.keyword == "EXPOSE"
        for tok in instr.args.split()
    }
    assert port in exposed, f"Dockerfile EXPOSE {sorted(exposed)} lacks {port}"


def test_payflow_env_names_map_to_config_keys(
    payflow_env: dict[str, str | None], config: dict[str, Any]
) -> None:
    assert payflow_env, "payflow sets no environment"
    for name, value in payflow_env.items():
        assert name.startswith(ENV_PREFIX), f"{name} does not start with {ENV_PREFIX}"
        hits = [
            (section, key)
            for section, key in env_to_toml_candidates(name)
            if isinstance(config.get(section), dict) and key in config[section]
        ]
        assert hits, f"{name} maps to no [section] key in {CONFIG_FILE.name}"
        section, key = hits[0]
        default = config[section][key]
        if isinstance(default, int) and not isinstance(default, bool) and value is not None:
            assert value.isdigit(), f"{name}={value!r} but [{section}] {key} is an integer"


def test_stop_grace_period_exceeds_app_grace(payflow_svc: dict[str, Any]) -> None:
    assert "stop_grace_period" in payflow_svc
    assert duration_seconds(payflow_svc["stop_grace_period"]) > APP_SHUTDOWN_GRACE_S
    assert payflow_svc.get("stop_signal", "SIGTERM") in {"SIGTERM", "TERM", 15}


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
    installs = [c for c in commands if "pip" in c[:4] and "install" in c and "." in c]
    assert installs, f"no `pip install .` among RUN commands: {runs}"


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
