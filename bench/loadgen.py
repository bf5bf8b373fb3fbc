"""A bounded HTTP load generator, run as its own process: python bench/loadgen.py URL FILE CONC N MAX_S.

Sends N requests from FILE (JSON Lines of request bodies, cycled) at CONC concurrent clients to
URL, stops after MAX_S seconds at most, and prints one JSON line: latencies, errors, wall time.
Loopback only: the URL must point at 127.0.0.1 or localhost.
"""
from __future__ import annotations

import asyncio
import json
import sys
import time
from urllib.parse import urlparse

import httpx


async def run(url: str, bodies: list[dict], conc: int, n: int, max_s: float, token: str | None) -> dict:
    host = urlparse(url).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"refusing to send load to {host}: loopback only")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    lat, errors, sent = [], [], 0
    deadline = time.perf_counter() + max_s
    lock = asyncio.Lock()

    async def client(c: httpx.AsyncClient):
        nonlocal sent
        while True:
            async with lock:
                if sent >= n or time.perf_counter() > deadline:
                    return
                body = bodies[sent % len(bodies)]
                sent += 1
            t0 = time.perf_counter()
            try:
                r = await c.post(url, json=body, headers=headers)
                if r.status_code != 200:
                    errors.append(f"HTTP {r.status_code}")
                else:
                    lat.append((time.perf_counter() - t0) * 1000.0)
            except httpx.HTTPError as e:
                errors.append(type(e).__name__)

    start = time.perf_counter()
    async with httpx.AsyncClient(timeout=max(max_s, 30)) as c:
        await asyncio.gather(*(client(c) for _ in range(conc)))
    return {"latencies_ms": lat, "errors": errors, "wall_s": time.perf_counter() - start, "sent": sent}


if __name__ == "__main__":
    url, path, conc, n, max_s = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
    token = sys.argv[6] if len(sys.argv) > 6 else None
    bodies = [json.loads(line) for line in open(path) if line.strip()]
    print(json.dumps(asyncio.run(run(url, bodies, conc, n, max_s, token))))
