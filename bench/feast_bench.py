"""Serving against Feast (not a test): the same 50 values per user read from the same Redis.

    .venv/bin/python bench/feast_bench.py [--users 100000] [--seconds 20] [--rounds 2]

Loopback only. Creates Feast's own venv in ~/.cache/dps/feast-venv the first time
(`feast[redis]==FEAST_VERSION` from PyPI; its pins differ from ours), starts a private
redis-server on a free port for both stores (stopped by its pid at the end) and:

- our side: a config of 10 features x 5 windows (every aggregation; 50 served values),
  `--users` records built with compute's pure code from ~10 events each (64 variants
  assigned round robin) written through `RedisOnlineStore.put_many`; the real serving
  process (`python -m runtime.serving.main`, shipped defaults apart from ports and
  backends);
- Feast: one feature view of the same 50 values, typed as our aggregations are, written
  by `write_to_online_store` (bench/feast_side.py in Feast's venv); `feast serve` tuned
  as its docs suggest for throughput: `--no-access-log --max-requests 0`, one worker;
- a bare endpoint doing one raw store read (bench/serving_bench.py's: HMGET, for a
  batch one pipelined HMGET per id), the limit our single-read p99 is held to.

Load: wrk (Debian's `wrk`) with `--connections` keep-alive connections, random users per
request, or, where wrk is missing, this script's own asyncio client in a child process.
Servers are pinned to CPU 1 and the load generator to CPU 0 when `taskset` exists and the
machine has two cores. Runs alternate ours / Feast / bare for each scenario, `--rounds`
times; printed: RPS, p50/p99 and the server's CPU time per request (its process and
children, from /proc: steadier than RPS when other work shares the cores) of each, the
median over rounds, then ours/Feast for RPS and CPU, and ours/bare for p99.
`--before DIR` adds the serving process of another checkout (`git archive` of an older
commit) to the same rounds, to measure a change against the same Feast in one sitting.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import random
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pydantic import SecretStr

from app.core.auth import issue_token
from app.core.config_loader import publish_config
from app.core.settings import AuthSettings, BackendSettings
from app.db.online_store import RecordWrite
from app.db.redis_cache import RedisCache
from app.db.redis_online import RedisOnlineStore
from bench.common import (
    ROOT,
    START_BOUND_S,
    Connection,
    free_port,
    percentile,
    process,
    wait_http,
)
from bench.serving_bench import VARIANTS, own_redis, prebuilt_records, snapshot
from runtime.compute.specs import build_specs

FEAST_VERSION = "0.67.0"
FEAST_VENV = Path.home() / ".cache" / "dps" / "feast-venv"
HERE = Path(__file__).resolve().parent
FEATURES = 10  # x 5 windows = 50 values per user, as Feast's view holds
BATCH = 100
# `feast serve` imports pandas, pyarrow and its registry before it listens: over a
# minute on a loaded 2-core machine (seen at load ~20), where our servers need seconds.
FEAST_START_BOUND_S = 240.0


# -- Feast's venv and repository ------------------------------------------------------------
def feast_python() -> Path:
    """Returns the Python of Feast's venv, creating it (once) with FEAST_VERSION."""
    python = FEAST_VENV / "bin" / "python"
    marker = FEAST_VENV / f".feast-{FEAST_VERSION}"
    if not marker.exists():
        print(f"creating {FEAST_VENV} with feast[redis]=={FEAST_VERSION} (once, a few minutes)")
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(FEAST_VENV)], check=True)
        pip = [str(python), "-m", "pip", "install", "-q", f"feast[redis]=={FEAST_VERSION}"]
        subprocess.run(pip, check=True)
        marker.touch()
    return python


def populate_feast(python: Path, repo: Path, redis_port: int, users: int) -> list[str]:
    """Applies Feast's repo and writes `users` users; returns the feature references."""
    out = subprocess.run(
        [str(python), str(HERE / "feast_side.py"), str(repo), str(redis_port), str(users)],
        check=True,
        capture_output=True,
        text=True,
        cwd=repo.parent,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"feast: wrote {users} users in {result['write_seconds']}s (write_to_online_store)")
    features: list[str] = result["features"]
    return features


# -- our side -------------------------------------------------------------------------------
async def populate_ours(redis_url: str, tmp: Path, users: int) -> str:
    """Deploys the config, writes `users` records; returns the project id."""
    project_id = f"bench_{uuid.uuid4().hex[:8]}"
    backends = BackendSettings(redis_url=redis_url, data_dir=tmp)
    snap = snapshot(project_id, uuid.uuid4().hex[:24], FEATURES)
    cache, store = RedisCache(backends), RedisOnlineStore(backends)
    await cache.initialize()
    await store.initialize()
    try:
        await publish_config(cache, snap)
        now_ms = time.time_ns() // 1_000_000
        records = prebuilt_records(snap, now_ms)
        ttl = build_specs(snap).ttl_seconds or 3600
        started = time.perf_counter()
        for chunk in range(0, users, 1000):
            writes = [
                RecordWrite(f"user-{n}", records[n % VARIANTS], None)
                for n in range(chunk, min(users, chunk + 1000))
            ]
            await store.put_many(project_id, writes, ttl)
        size = len(json.dumps(records[0], separators=(",", ":")))
        print(
            f"ours: wrote {users} users in {time.perf_counter() - started:.1f}s "
            f"(RedisOnlineStore.put_many; record ~{size / 1024:.1f} KB JSON)"
        )
    finally:
        await store.close()
        await cache.close()
    return project_id


# -- load -----------------------------------------------------------------------------------
class Target:
    """One server and how to ask it for one user or a batch, as wrk Lua and as Python."""

    def __init__(
        self,
        name: str,
        port: int,
        headers: dict[str, str],
        single: tuple[str, str, str],
        batch: tuple[str, str, str],
    ) -> None:
        # (method, path template, body template); `{users}` is the JSON list of ids in a
        # body, `{user}` one id in a path.
        self.name, self.port, self.headers = name, port, headers
        self.shapes = {"single": single, "batch": batch}
        self.pid = 0  # the server process, once started


_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """Returns the CPU time (user + system) of `pid` and its descendants (Feast's
    server may fork workers). Per request it is a steadier figure than requests/s on a
    machine whose cores other work shares."""
    total = 0.0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / _TICKS
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(c) for c in (task / "children").read_text().split()]
        except FileNotFoundError:  # it exited meanwhile
            continue
    return total


def wrk_script(target: Target, scenario: str, users: int) -> str:
    method, path, body = target.shapes[scenario]
    count = 1 if scenario == "single" else BATCH
    headers = "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in target.headers.items())
    return f"""
math.randomseed({random.randrange(1 << 30)})
wrk.method = "{method}"
wrk.headers["Content-Type"] = "application/json"
{headers}
local path, body = [[{path}]], [[{body}]]
request = function()
  local ids = {{}}
  for i = 1, {count} do ids[i] = '"user-' .. math.random(0, {users - 1}) .. '"' end
  local list = table.concat(ids, ",")
  local p = path:gsub("{{user}}", string.sub(ids[1], 2, -2))
  if body == "" then return wrk.format(nil, p) end
  return wrk.format(nil, p, nil, (body:gsub("{{users}}", list)))
end
"""


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def parse_wrk(text: str) -> dict[str, float]:
    """Returns rps, p50 and p99 (ms) and errors (non-2xx, socket errors) of wrk's output."""

    def ms(quantile: str) -> float:
        found = re.search(rf"^\s+{quantile}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
        if found is None:
            raise SystemExit(f"unexpected wrk output:\n{text}")
        return float(found[1]) * _UNITS[found[2]]

    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    errors = int(non_2xx[1]) if non_2xx else 0
    errors += sum(int(n) for n in sockets.groups()) if sockets else 0
    done = re.search(r"(\d+) requests in", text)
    return {
        "rps": float(rps[1]) if rps else 0.0,
        "p50": ms("50"),
        "p99": ms("99"),
        "errors": errors,
        "requests": int(done[1]) if done else 0,
    }


def pinned(cpu: int | None, command: list[str]) -> list[str]:
    return command if cpu is None else ["taskset", "-c", str(cpu), *command]


def run_load(
    target: Target, scenario: str, args: argparse.Namespace, tmp: Path, cpu: int | None
) -> dict[str, float]:
    """One run of `args.seconds` against `target` (after a short warm-up)."""
    if shutil.which("wrk"):
        script = tmp / f"{target.name}-{scenario}.lua"
        script.write_text(wrk_script(target, scenario, args.users))
        url = f"http://127.0.0.1:{target.port}"
        base = ["wrk", "-t1", f"-c{args.connections}", "-s", str(script), "--latency"]
        warm = [*base, "-d2s", url]
        subprocess.run(pinned(cpu, warm), check=True, capture_output=True)
        cpu_before = cpu_seconds(target.pid)
        out = subprocess.run(
            pinned(cpu, [*base, f"-d{args.seconds}s", "--timeout", "10s", url]),
            check=True,
            capture_output=True,
            text=True,
        )
        result = parse_wrk(out.stdout)
        cpu_s = cpu_seconds(target.pid) - cpu_before
        result["cpu_ms"] = cpu_s * 1000 / max(1, result["requests"])
        return result
    spec = LoadSpec(
        port=target.port,
        headers=target.headers,
        shape=target.shapes[scenario],
        count=1 if scenario == "single" else BATCH,
        users=args.users,
        connections=args.connections,
        seconds=args.seconds,
    )
    command = [sys.executable, __file__, "--python-load", json.dumps(dataclasses.asdict(spec))]
    cpu_before = cpu_seconds(target.pid)  # includes its 2 s warm-up: a slight over-count
    out = subprocess.run(pinned(cpu, command), check=True, capture_output=True, text=True)
    result = json.loads(out.stdout)
    cpu_s = cpu_seconds(target.pid) - cpu_before
    result["cpu_ms"] = cpu_s * 1000 / max(1, result["requests"])
    return result


@dataclasses.dataclass
class LoadSpec:
    """What the fallback load generator's child process is asked to do."""

    port: int
    headers: dict[str, str]
    shape: tuple[str, str, str]
    count: int
    users: int
    connections: int
    seconds: float


async def python_load(spec: LoadSpec) -> dict[str, float]:
    """The fallback load generator: closed loop, one keep-alive connection per worker."""
    method, path, body = spec.shape
    rng = random.Random()
    latencies: list[float] = []
    errors = 0

    def request() -> tuple[str, bytes]:
        ids = [f'"user-{rng.randrange(spec.users)}"' for _ in range(spec.count)]
        return path.replace("{user}", ids[0][1:-1]), body.replace("{users}", ",".join(ids)).encode()

    async def worker(conn: Connection, deadline: float) -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            p, b = request()
            started = time.perf_counter()
            status, _ = await conn.request(method, p, b)
            latencies.append(time.perf_counter() - started)
            errors += status != 200

    conns = [Connection(spec.port, spec.headers) for _ in range(spec.connections)]
    await asyncio.gather(*(worker(c, time.perf_counter() + 2) for c in conns))  # warm-up
    latencies.clear()
    started = time.perf_counter()
    await asyncio.gather(*(worker(c, started + spec.seconds) for c in conns))
    elapsed = time.perf_counter() - started
    for conn in conns:
        await conn.close()
    return {
        "rps": len(latencies) / elapsed,
        "p50": percentile(latencies, 0.5) * 1000,
        "p99": percentile(latencies, 0.99) * 1000,
        "errors": errors,
        "requests": len(latencies),
    }


# -- main -----------------------------------------------------------------------------------
@contextmanager
def servers(
    args: argparse.Namespace, tmp: Path, redis_url: str, project_id: str, feast_repo: Path
) -> Iterator[list[Target]]:
    """Starts ours, Feast and the bare endpoint; yields their targets; stops them."""
    two_cores = (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None
    server_cpu = 1 if two_cores and not args.no_pin else None
    python = sys.executable
    jwt_secret = secrets.token_urlsafe(32)
    ports = {name: free_port() for name in ("ours", "before", "feast", "bare")}
    env = {
        **os.environ,
        "ENVIRONMENT": "production",
        "JWT_SECRET": jwt_secret,
        "CONFIG_STORE": "sqlite",
        "CACHE": "redis",
        "ONLINE_STORE": "redis",
        "REDIS_URL": redis_url,
        "DATA_DIR": str(tmp),
    }
    for inherited in ("LOG_LEVEL", "SERVING_ACCESS_LOG"):  # shipped defaults unless asked
        if inherited not in os.environ:
            env.pop(inherited, None)
    token = issue_token(AuthSettings(secret=SecretStr(jwt_secret)), "bench", [project_id])
    feast_bin = str(FEAST_VENV / "bin" / "feast")
    commands = {
        "ours": [python, "-m", "runtime.serving.main"],
        "before": [python, "-m", "runtime.serving.main"],
        "feast": [
            *[feast_bin, "-c", str(feast_repo), "serve", "-h", "127.0.0.1"],
            *["-p", str(ports["feast"]), "--no-access-log", "--max-requests", "0", "-w", "1"],
        ],
        "bare": [
            *[python, str(HERE / "serving_bench.py"), "--serve-bare", str(ports["bare"])],
            *["--redis-url", redis_url],
        ],
    }
    cwd = {"before": args.before} if args.before else {}
    refs = json.dumps(args.feast_features)
    feast_body = '{"features": ' + refs + ', "entities": {"user_id": [{users}]}}'
    ours = [
        Target(
            name,
            ports[name],
            {"Authorization": f"Bearer {token}"},
            ("GET", f"/features/{project_id}/users/{{user}}", ""),
            ("POST", f"/features/{project_id}/users/batch", '{"user_ids": [{users}]}'),
        )
        for name in ("ours", "before")
        if name in cwd or name == "ours"
    ]
    targets = [
        *ours,
        Target(
            "feast",
            ports["feast"],
            {},
            ("POST", "/get-online-features", feast_body),
            ("POST", "/get-online-features", feast_body),
        ),
        Target(
            "bare",
            ports["bare"],
            {},
            ("GET", f"/raw/{project_id}/{{user}}", ""),
            ("POST", f"/raw/{project_id}/batch", '{"user_ids": [{users}]}'),
        ),
    ]
    with ExitStack() as stack:
        for target in targets:
            log = tmp / f"{target.name}.log"
            command = pinned(server_cpu, commands[target.name])
            own_env = {**env, "SERVING_PORT": str(target.port)}
            child = stack.enter_context(process(command, own_env, log, cwd.get(target.name, ROOT)))
            wait_http(
                f"http://127.0.0.1:{target.port}/health",
                child,
                log,
                FEAST_START_BOUND_S if target.name == "feast" else START_BOUND_S,
            )
            target.pid = child.pid  # taskset execs the server: same pid
        yield targets


# (server, scenario) -> one result per round
Results = dict[tuple[str, str], list[dict[str, float]]]


def report(results: Results, args: argparse.Namespace) -> None:
    def med(name: str, scenario: str, key: str) -> float:
        return statistics.median(r[key] for r in results[(name, scenario)])

    print(
        f"\n{args.users} users, 50 values each, {args.connections} connections, "
        f"{args.seconds:g} s runs x {args.rounds} rounds (median shown)"
        + ("" if args.users >= 100_000 else f"  ** quick run: {args.users} users, not 100,000 **")
    )
    print(
        f"{'read':<10}{'server':<7}{'RPS':>9}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'CPU ms/req':>12}{'errors':>8}"
    )
    names = [name for name in ("ours", "before", "feast", "bare") if (name, "single") in results]
    for scenario in ("single", "batch"):
        for name in names:
            errors = sum(r["errors"] for r in results[(name, scenario)])
            print(
                f"{scenario:<10}{name:<7}{med(name, scenario, 'rps'):>9.1f}"
                f"{med(name, scenario, 'p50'):>9.2f}{med(name, scenario, 'p99'):>9.2f}"
                f"{med(name, scenario, 'cpu_ms'):>12.2f}{errors:>8}"
            )
    print()
    for name in (n for n in names if n in ("ours", "before")):
        for scenario, label in (("single", "one user"), ("batch", f"{BATCH}-user batch")):
            rps = med(name, scenario, "rps") / med("feast", scenario, "rps")
            cpu = med("feast", scenario, "cpu_ms") / med(name, scenario, "cpu_ms")
            p99 = med(name, scenario, "p99") / med("bare", scenario, "p99")
            print(
                f"{name:<7}{label:<16} vs Feast: RPS {rps:5.1f}x, {cpu:5.1f}x less server "
                f"CPU per request   p99 vs bare {p99:4.2f}x"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--seconds", type=int, default=20, help="per run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--no-pin", action="store_true", help="do not pin to CPUs")
    parser.add_argument(
        "--before",
        type=Path,
        help="also run the serving process of this checkout (e.g. `git archive` of an "
        "older commit), as `before`, in the same rounds",
    )
    parser.add_argument("--python-load", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.python_load:
        spec = LoadSpec(**json.loads(args.python_load))
        print(json.dumps(asyncio.run(python_load(spec))))
        return
    python = feast_python()
    with tempfile.TemporaryDirectory(prefix="feast_bench_") as tmp_dir:
        tmp = Path(tmp_dir)
        with own_redis(tmp) as redis_url:
            redis_port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
            project_id = asyncio.run(populate_ours(redis_url, tmp, args.users))
            feast_repo = tmp / "feast_repo"
            args.feast_features = populate_feast(python, feast_repo, redis_port, args.users)
            load_cpu = None if args.no_pin or (os.cpu_count() or 1) < 2 else 0
            results: Results = {}
            with servers(args, tmp, redis_url, project_id, feast_repo) as targets:
                for _ in range(args.rounds):
                    for scenario in ("single", "batch"):
                        for target in targets:
                            run = run_load(target, scenario, args, tmp, load_cpu)
                            results.setdefault((target.name, scenario), []).append(run)
                            print(
                                f"  {scenario:<7}{target.name:<6} {run['rps']:8.1f} req/s  "
                                f"p50 {run['p50']:.2f} ms  p99 {run['p99']:.2f} ms  "
                                f"CPU {run['cpu_ms']:.2f} ms/req",
                                flush=True,
                            )
            report(results, args)


if __name__ == "__main__":
    main()
