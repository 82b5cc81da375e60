"""Sends N concurrent GET requests, spread round-robin over several host:port targets (as a
Service spreads them over pods), each on its own connection; prints one JSON summary line.

    python scenario_client.py N PATH HOST:PORT [HOST:PORT ...]
"""

import asyncio
import json
import sys
import time


async def one(host, port, path, started):
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    response = await reader.read()
    writer.close()
    status = int(response.split(b" ", 2)[1]) if response else 0
    return status, time.monotonic() - started


async def main():
    n, path, targets = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
    addresses = [(t.rsplit(":", 1)[0], int(t.rsplit(":", 1)[1])) for t in targets]
    started = time.monotonic()
    results = await asyncio.gather(
        *(one(*addresses[i % len(addresses)], path, started) for i in range(n))
    )
    wall = time.monotonic() - started
    latencies = sorted(latency for _, latency in results)
    ok = sum(1 for status, _ in results if status == 200)
    print(json.dumps({
        "requests": n, "ok": ok, "wall_s": round(wall, 3),
        "first_s": round(latencies[0], 3), "median_s": round(latencies[n // 2], 3),
        "last_s": round(latencies[-1], 3), "throughput_rps": round(ok / wall, 2),
    }))


asyncio.run(main())
