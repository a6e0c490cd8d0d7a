"""Routing: the cost of one routing decision (the affinity key from the conversation's leading
text, then `BackendPool.route`: model, zone, health, circuit, least load, weighted rendezvous
hashing) as the fleet grows, measured in-process with no network.

    python bench/routing.py [--fleets 1,3,16,64] [--decisions 200000]

Each fleet has half its engines in another zone (never chosen), varied loads and weights, and
requests with 200 distinct conversation prefixes, so affinity and the load slack both play.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from functools import partial

from tokenport.api.openai.protocol import parse_chat
from tokenport.config import BackendConfig
from tokenport.gateway.backends import Backend, BackendPool
from tokenport.gateway.lifecycle import affinity_key


def fleet(n: int) -> BackendPool:
    backends = []
    for i in range(n):
        zone = "overseas" if i % 2 == 0 or n == 1 else "domestic"
        cfg = BackendConfig(f"engine-{i}", f"http://10.0.0.{i}:8000", zone, ("m",), weight=1 + i % 3)
        b = Backend(cfg, healthy=True)
        b.engine_load = random.randrange(8)
        backends.append(b)
    return BackendPool(backends)


def bodies(count: int) -> list[bytes]:
    out = []
    for i in range(count):
        system = f"You are assistant {i}. " * 20
        out.append(
            b'{"model":"m","messages":[{"role":"system","content":"%s"},'
            b'{"role":"user","content":"translate this supplier message"}],"max_tokens":64}' % system.encode()
        )
    return out


def measure(n: int, decisions: int) -> tuple[float, float, dict[str, int]]:
    """Median and p99 microseconds per decision (affinity key + route), and the spread."""
    random.seed(n)
    pool = fleet(n)
    requests = [parse_chat(b) for b in bodies(200)]  # parsed once, as the request path does
    headers: dict[bytes, bytes] = {}
    chosen: dict[str, int] = {}
    samples = []
    batch = 1000
    for start in range(0, decisions, batch):
        t0 = time.perf_counter_ns()
        for i in range(start, start + batch):
            req = requests[i % len(requests)]
            b = pool.route(req.model, "overseas", affinity=partial(affinity_key, headers, req))
            chosen[b.name] = chosen.get(b.name, 0) + 1
        samples.append((time.perf_counter_ns() - t0) / batch / 1000)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99)], chosen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fleets", default="1,3,16,64")
    ap.add_argument("--decisions", type=int, default=200_000)
    a = ap.parse_args()
    print("| engines (in zone) | µs per decision (median batch) | p99 batch | engines used |")
    print("|---|---:|---:|---:|")
    for n in (int(x) for x in a.fleets.split(",")):
        p50, p99, chosen = measure(n, a.decisions)
        in_zone = (n + 1) // 2 if n > 1 else 1
        print(f"| {n} ({in_zone}) | {p50:.2f} | {p99:.2f} | {len(chosen)} |")


if __name__ == "__main__":
    main()
