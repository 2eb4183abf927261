"""Redis behind Sentinel: ``redis+sentinel://`` URLs (parsing, masking, the clients made from
them) and, on real processes (a primary, a replica, a sentinel), a failover under load: the
primary is killed with SIGKILL while `payflow serve` works through 2,000 payments."""

from __future__ import annotations

import asyncio
import functools
import re
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import cast

import pytest
import redis
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.backoff import NoBackoff

from conftest import free_port, need
from daemon_proc import PAYFLOW, Daemon, daemon_env
from payflow._config_parse import is_redis_url, mask_url
from payflow.config import load_config
from payflow.errors import ConfigError
from payflow.redis_client import (
    DEFAULT_SENTINEL_PORT,
    PrimaryConnection,
    SentinelRedis,
    SentinelURL,
    connect,
    describe,
    parse_sentinel_url,
)
from test_chaos import leftovers

SERVICE = "mymaster"

# --- parsing --------------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "expected"), [
    ("redis+sentinel://127.0.0.1:26379/mymaster",
     SentinelURL(sentinels=(("127.0.0.1", 26379),), service_name="mymaster")),
    ("redis+sentinel://s1/mymaster",
     SentinelURL(sentinels=(("s1", DEFAULT_SENTINEL_PORT),), service_name="mymaster")),
    ("REDIS+SENTINEL://s1:1,s2:2,s3/svc/3/",
     SentinelURL(sentinels=(("s1", 1), ("s2", 2), ("s3", 26379)), service_name="svc", db=3)),
    ("redis+sentinel://:p%40ss@[::1]:5000,[fe80::1]/svc.a-b_c/0",
     SentinelURL(sentinels=(("::1", 5000), ("fe80::1", 26379)), service_name="svc.a-b_c",
                 password="p@ss")),
    ("redis+sentinel://app:pw@s1:1/svc?sentinel_password=spw",
     SentinelURL(sentinels=(("s1", 1),), service_name="svc", username="app", password="pw",
                 sentinel_password="spw")),
    ("redis+sentinel://app@s1:1/svc",
     SentinelURL(sentinels=(("s1", 1),), service_name="svc", username="app")),
])
def test_parse_good_sentinel_urls(url: str, expected: SentinelURL) -> None:
    got = parse_sentinel_url(url)
    assert got == expected
    assert (got.password, got.sentinel_password) == (expected.password,
                                                     expected.sentinel_password)
    assert is_redis_url(url)
    assert load_config(env={"PAYFLOW_REDIS_URL": url}).redis.url == url


@pytest.mark.parametrize(("url", "reason"), [
    ("redis+sentinel://", "an empty sentinel address"),
    ("redis+sentinel://s1:1", "no service name"),
    ("redis+sentinel://s1:1/", "no service name"),
    ("redis+sentinel://:secret@s1:1,/svc", "an empty sentinel address"),
    ("redis+sentinel://s1:1,,s2:2/svc", "an empty sentinel address"),
    ("redis+sentinel://s1:0/svc", "bad port in sentinel address 's1:0'"),
    ("redis+sentinel://s1:99999/svc", "bad port in sentinel address 's1:99999'"),
    ("redis+sentinel://s1:x/svc", "bad port in sentinel address 's1:x'"),
    ("redis+sentinel://s1:/svc", "empty port"),
    ("redis+sentinel://s1:1:2/svc", "bad port"),
    ("redis+sentinel://[::1/svc", "Invalid IPv6 URL"),
    ("redis+sentinel://[::1]x/svc", "bad sentinel address '[::1]x'"),
    ("redis+sentinel://s1/svc/x", "expected /service_name or /service_name/db"),
    ("redis+sentinel://s1/svc/0/1", "expected /service_name or /service_name/db"),
    ("redis+sentinel://s1/svc?db=2", "unknown query parameter 'db'"),
    ("redis+sentinel://s1/svc?sentinel_password", "cannot parse the query"),
    ("redis+sentinel://s1/svc#x", "fragment"),
    ("redis+sentinel://s1/my master", "whitespace"),
    ("redis://s1/svc", "the scheme is not redis+sentinel://"),
])
def test_parse_bad_sentinel_urls(url: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_sentinel_url(url)
    message = str(info.value)
    assert reason in message
    assert "\n" not in message and "secret" not in message
    assert message.startswith("bad Redis Sentinel URL ")
    assert message.endswith("expected redis+sentinel://[[user]:password@]host:port"
                            "[,host:port...]/service_name[/db][?sentinel_password=...]")
    if url.startswith("redis+sentinel"):
        assert not is_redis_url(url)


def test_a_bad_sentinel_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"^\[redis\] url: expected .*PAYFLOW_REDIS_URL"):
        load_config(env={"PAYFLOW_REDIS_URL": "redis+sentinel://s1:1"})


def test_other_redis_urls_still_pass_and_fail_as_before() -> None:
    assert is_redis_url("redis://h:6379/0") and is_redis_url("embedded")
    assert is_redis_url("unix:///run/redis.sock") and is_redis_url("rediss://:pw@h")
    assert not is_redis_url("redis+sentinelx://s1/svc") and not is_redis_url("sentinel://s1/m")


@pytest.mark.parametrize(("url", "masked"), [
    ("redis+sentinel://:pw@s1:1,s2:2/svc/1", "redis+sentinel://:***@s1:1,s2:2/svc/1"),
    ("redis+sentinel://u:pw@[::1]:1/svc?sentinel_password=spw",
     "redis+sentinel://u:***@[::1]:1/svc?sentinel_password=***"),
    ("redis+sentinel://s1/svc?sentinel_password=spw", "redis+sentinel://s1/svc?sentinel_password=***"),
    ("redis+sentinel://s1:1,s2:2/svc", "redis+sentinel://s1:1,s2:2/svc"),
    ("redis://:pw@h:1/0?password=x", "redis://:***@h:1/0?password=***"),
])
def test_passwords_are_masked(url: str, masked: str) -> None:
    assert mask_url(url, lone_user_is_secret=True) == masked
    assert describe(url) == masked


# --- the clients connect() makes (nothing is connected until the first command) --------------


async def test_connect_plain_urls_as_before() -> None:
    retry = Retry(NoBackoff(), 1)
    client = connect("redis://:pw@127.0.0.1:6390/2", single_connection=True, socket_timeout=7.0,
                     connect_timeout=2.0, retry=retry)
    try:
        assert type(client) is Redis and client.single_connection_client
        kwargs = client.connection_pool.connection_kwargs
        assert (kwargs["host"], kwargs["port"], kwargs["db"], kwargs["password"]) == (
            "127.0.0.1", 6390, 2, "pw")
        assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (7.0, 2.0)
        assert kwargs["retry"] is retry
    finally:
        await client.aclose()


@pytest.mark.parametrize("single", [True, False])
async def test_connect_sentinel_url(single: bool) -> None:
    client = connect("redis+sentinel://app:pw@127.0.0.1:1,[::1]:2/svc/4?sentinel_password=spw",
                     single_connection=single, socket_timeout=6.0, connect_timeout=1.5,
                     retry=Retry(NoBackoff(), 1))
    try:
        assert isinstance(client, SentinelRedis)
        assert client.single_connection_client is single
        pool = client.connection_pool
        assert isinstance(pool, SentinelConnectionPool) and pool.is_master
        assert pool.connection_class is PrimaryConnection
        assert pool.service_name == "svc"
        kwargs = pool.connection_kwargs
        assert (kwargs["db"], kwargs["username"], kwargs["password"]) == (4, "app", "pw")
        assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (6.0, 1.5)
        sentinels = client.sentinel_manager.sentinels
        assert [(s.connection_pool.connection_kwargs["host"],
                 s.connection_pool.connection_kwargs["port"]) for s in sentinels] == [
            ("127.0.0.1", 1), ("::1", 2)]
        for s in sentinels:  # the sentinels' own settings: short timeouts, their password
            skw = s.connection_pool.connection_kwargs
            assert (skw["socket_timeout"], skw["password"]) == (1.5, "spw")
    finally:
        await client.aclose()


def test_connect_refuses_a_bad_sentinel_url() -> None:
    with pytest.raises(ConfigError, match="no service name"):
        connect("redis+sentinel://:pw@127.0.0.1:1", single_connection=False, socket_timeout=1.0,
                connect_timeout=1.0)


# --- real processes: a primary, a replica, a sentinel ---------------------------------------


def _ping(port: int, timeout: float = 10.0) -> None:
    client = redis.Redis(port=port, socket_connect_timeout=0.2, socket_timeout=1.0)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                if client.ping():
                    return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
    finally:
        client.close()


def _wait(pred: Callable[[], bool], timeout: float, what: str) -> float:
    started = time.monotonic()
    while not pred():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - started


class SentinelCluster:
    """redis-server processes of the test's own on free ports of 127.0.0.1: a primary, one
    replica, and ``sentinels`` sentinels (quorum: a majority) watching ``mymaster``."""

    def __init__(self, directory: Path, sentinels: int = 1) -> None:
        self.dir = directory
        self.primary_port = free_port()
        self.replica_port = free_port()
        self.sentinel_ports = [free_port() for _ in range(sentinels)]
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{SERVICE}"

    def _spawn(self, port: int, args: list[str]) -> None:
        log = (self.dir / f"redis-{port}.log").open("ab")
        self.procs[port] = subprocess.Popen(["redis-server", *args], stdout=log,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        _ping(port)

    def _server(self, port: int, *extra: str) -> None:
        work = self.dir / str(port)
        work.mkdir()
        self._spawn(port, ["--port", str(port), "--bind", "127.0.0.1", "--save", "",
                           "--appendonly", "no", "--dir", str(work), *extra])

    def start(self) -> None:
        self._server(self.primary_port, "--repl-diskless-sync-delay", "0")
        self._server(self.replica_port, "--replicaof", "127.0.0.1", str(self.primary_port))
        primary = redis.Redis(port=self.primary_port)
        try:  # replica in sync before the sentinels' first INFO, which is how they find it
            _wait(lambda: _replica_online(primary), 10, "the replica to sync")
        finally:
            primary.close()
        quorum = len(self.sentinel_ports) // 2 + 1
        for port in self.sentinel_ports:
            conf = self.dir / f"sentinel-{port}.conf"  # sentinels rewrite their config file
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.dir}\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {self.primary_port} {quorum}\n"
                f"sentinel down-after-milliseconds {SERVICE} 500\n"
                f"sentinel failover-timeout {SERVICE} 3000\n"
                f"sentinel parallel-syncs {SERVICE} 1\n")
            self._spawn(port, [str(conf), "--sentinel"])
        for port in self.sentinel_ports:
            _wait(functools.partial(self._sees_replica, port), 15,
                  f"sentinel {port} to see the replica")

    def _sees_replica(self, sentinel_port: int) -> bool:
        s = redis.Redis(port=sentinel_port, decode_responses=True)
        try:
            replicas = cast(list[dict[str, object]], s.sentinel_slaves(SERVICE))
        finally:
            s.close()
        return any(r["port"] == self.replica_port and not r["is_sdown"] for r in replicas)

    def master_port(self, sentinel: int = 0) -> int | None:
        """The primary's port according to the ``sentinel``-th sentinel."""
        s = redis.Redis(port=self.sentinel_ports[sentinel], socket_timeout=1.0)
        try:
            addr = cast(tuple[str, int] | None, s.sentinel_get_master_addr_by_name(SERVICE))
        except redis.RedisError:
            return None
        finally:
            s.close()
        return int(addr[1]) if addr else None

    def kill(self, port: int) -> None:
        proc = self.procs.pop(port)
        proc.kill()
        proc.wait(timeout=10)

    def stop(self) -> None:
        for port in list(self.procs):
            self.kill(port)


def _replica_online(primary: redis.Redis) -> bool:
    info = cast(dict[str, object], primary.info("replication"))
    replica = info.get("slave0")
    return isinstance(replica, dict) and replica.get("state") == "online"


@pytest.fixture
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SentinelCluster]:
    """A started cluster; ``@pytest.mark.parametrize("cluster", [3], indirect=True)`` for three
    sentinels (default: one)."""
    need("redis-server", shutil.which("redis-server") is not None)
    c = SentinelCluster(tmp_path, sentinels=getattr(request, "param", 1))
    try:
        c.start()
        yield c
    finally:
        c.stop()


def _holds(port: int, key: str, items: list[bytes]) -> bool:
    r = redis.Redis(port=port, socket_timeout=1.0)
    try:
        return cast(list[bytes], r.lrange(key, 0, -1)) == items
    finally:
        r.close()


def _role(port: int) -> str:
    r = redis.Redis(port=port, socket_timeout=1.0)
    try:
        return str(cast(dict[str, object], r.info("replication"))["role"])
    finally:
        r.close()


@pytest.mark.redis
@pytest.mark.timeout(60)
@pytest.mark.parametrize("cluster", [3], indirect=True, ids=["3 sentinels"])
async def test_a_single_connection_client_follows_the_failover(cluster: SentinelCluster,
                                                               tmp_path: Path) -> None:
    """The consumer's kind of client: one connection, BLMOVE blocking on it, and after the
    primary dies, the same client on the promoted replica."""
    client = connect(cluster.url, single_connection=True, socket_timeout=5.0,
                     connect_timeout=1.0, retry=Retry(NoBackoff(), 1))
    pusher = connect(cluster.url, single_connection=False, socket_timeout=2.0,
                     connect_timeout=1.0)
    try:
        blocked = asyncio.ensure_future(client.blmove("q", "q:processing", 3, "RIGHT", "LEFT"))
        await asyncio.sleep(0.3)
        assert not blocked.done()  # it blocks on the primary
        await pusher.lpush("q", "job-1")
        assert await asyncio.wait_for(blocked, 5) == b"job-1"
        connection = client.connection
        assert connection is not None and connection.port == cluster.primary_port
        assert await client.wait(1, 5000) == 1
        # and seen on the replica itself: right after a diskless full sync, Redis 7.0 may count
        # the replica in WAIT before it streams writes to it (seen here: promoted at offset 1)
        await asyncio.to_thread(_wait, functools.partial(_holds, cluster.replica_port,
                                                         "q:processing", [b"job-1"]),
                                10, "the replica to hold job-1")

        cluster.kill(cluster.primary_port)
        killed = time.monotonic()
        errors = 0
        while True:  # the callers back off on errors; here: retry until the new primary
            try:
                await client.lpush("q", "job-2")
                break
            except redis.RedisError:
                errors += 1
                assert time.monotonic() - killed < 20, "no new primary within 20 s"
                await asyncio.sleep(0.1)
        recovered = time.monotonic() - killed
        assert client.connection is connection  # the same one connection, reconnected
        assert connection.port == cluster.replica_port
        assert _role(cluster.replica_port) == "master"
        # the sentinel that answered the client knew first; the others learn it from it
        await asyncio.to_thread(_wait, lambda: all(
            cluster.master_port(n) == cluster.replica_port
            for n in range(len(cluster.sentinel_ports))), 10, "every sentinel to agree")
        assert await client.lrange("q:processing", 0, -1) == [b"job-1"]  # it was replicated
        assert await client.blmove("q", "q:processing", 1, "RIGHT", "LEFT") == b"job-2"
        assert await pusher.llen("q:processing") == 2  # the pooled client moved over too
        print(f"\nsingle-connection client: writes failed {errors} times; back on the promoted "
              f"replica {recovered:.1f} s after the primary was killed")
        # A dead letter on the promoted primary, where `payflow dead` must find it.
        await pusher.lpush("{payflow_jobs}:dead", b'{"job":"garbage","reason":"test"}')
    finally:
        await client.aclose()
        await pusher.aclose()
    # `payflow dead` reaches Redis through the sentinel URL too
    cli = await asyncio.create_subprocess_exec(
        PAYFLOW, "dead", "list", "--redis-url", cluster.url, cwd=tmp_path, env=daemon_env(),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(cli.communicate(), 20)
    assert cli.returncode == 0, err.decode()
    assert b"payflow_jobs" in out


def _delivered(d: Daemon) -> Counter[str]:
    return Counter(re.findall(r"Webhook delivered: webhook:payment\.success:(pay_s_\d+)",
                              d.output()))


@pytest.mark.redis
@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_daemon_rides_out_a_failover(cluster: SentinelCluster,
                                     make_daemon: Callable[..., Daemon]) -> None:
    count = 2000
    d = make_daemon(cluster.url, PAYFLOW_WORKERS_PAYMENTS="2", PAYFLOW_WORKERS_WEBHOOKS="2",
                    PAYFLOW_QUEUE_BATCH_SIZE="10", PAYFLOW_PROCESSOR_LATENCY_MS="40",
                    PAYFLOW_WEBHOOKS_LOG_SINK="true")  # "Webhook delivered: …" in the log
    primary = redis.Redis(port=cluster.primary_port)
    ids = [f"pay_s_{n}" for n in range(count)]
    try:
        for start in range(0, count, 500):
            primary.lpush("payflow_jobs",
                          *(f"process_payment:{p}:upi" for p in ids[start:start + 500]))
        assert primary.wait(1, 5000) == 1  # all of them on the replica
    finally:
        primary.close()
    _wait(lambda: sum(_delivered(d).values()) >= count // 4, 20, "a quarter delivered")
    cluster.kill(cluster.primary_port)  # SIGKILL, mid-run
    killed = time.monotonic()
    at_kill = len(_delivered(d))
    promoted = _wait(lambda: cluster.master_port() == cluster.replica_port, 20,
                     "the sentinel to promote the replica")
    new = redis.Redis(port=cluster.replica_port)
    try:
        deadline = killed + 30
        while time.monotonic() < deadline and (len(_delivered(d)) < count
                                               or leftovers(new)):
            assert d.proc is not None and d.proc.poll() is None, d.output()[-3000:]
            time.sleep(0.1)
        recovered = time.monotonic() - killed
        delivered = _delivered(d)
        lost = sorted(set(ids) - set(delivered))
        duplicates = sum(n - 1 for n in delivered.values())
        output = d.output()
        print(f"\nfailover: replica promoted {promoted:.1f} s after the kill; {at_kill} of "
              f"{count} webhooks delivered at the kill, all delivered or given up "
              f"{recovered:.1f} s after it; lost {len(lost)} {lost[:10]}; "
              f"{duplicates} duplicate deliveries; "
              f"{output.count('queue.fetch_failed')} fetch failures, "
              f"{output.count('queue.settle_failed')} settle failures logged; "
              f"left in Redis: {leftovers(new)}")
        assert d.proc is not None and d.proc.poll() is None  # it never exited
        # every consumer reconnects (one idle in BLMOVE at the kill may still be backing off
        # when the work is done: the pipeline is fast enough to finish first)
        _wait(lambda: "queue.reconnected" in d.output(), 15, "a consumer to reconnect")
        assert not lost, f"{len(lost)} payments' webhooks never delivered: {lost[:20]}"
        assert not leftovers(new)
        assert d.stop() == 0
    finally:
        new.close()
