"""An asyncio worker that takes jobs from a Redis list and runs up to CONCURRENCY at once.

A job is JSON, {"id": "...", "seconds": 2.5}: the worker awaits that long, standing in for
I/O-bound work (calls to other services, a model, a database), then appends
{"id", "worker", "started", "finished"} to the list RESULTS_KEY. Producers RPUSH jobs:

    redis-cli RPUSH jobs '{"id": "a", "seconds": 2}'

On SIGTERM (or SIGINT) it takes no new job, finishes the jobs in hand, and exits 0.

Environment: REDIS_URL (redis://localhost:6379/0), REDIS_PASSWORD (if the URL has none),
QUEUE_KEY (jobs), RESULTS_KEY (jobs:done), CONCURRENCY (8).
"""

import asyncio
import json
import logging
import os
import signal
import socket
import time

import redis.asyncio as redis
from redis.exceptions import ConnectionError as RedisConnectionError

REDIS_URL = os.environ.get("REDIS_URL", "redis://localhost:6379/0")
REDIS_PASSWORD = os.environ.get("REDIS_PASSWORD") or None
QUEUE_KEY = os.environ.get("QUEUE_KEY", "jobs")
RESULTS_KEY = os.environ.get("RESULTS_KEY", "jobs:done")
CONCURRENCY = int(os.environ.get("CONCURRENCY", "8"))
# How long one BLPOP blocks: the longest an idle worker takes to notice SIGTERM.
POLL_SECONDS = 1
WORKER = f"{socket.gethostname()}-{os.getpid()}"

log = logging.getLogger("worker")


async def process(client: redis.Redis, raw: str | bytes) -> None:
    job = json.loads(raw)
    started = time.time()
    log.info("job %s: started", job.get("id"))
    await asyncio.sleep(float(job["seconds"]))
    result = {"id": job.get("id"), "worker": WORKER, "started": started, "finished": time.time()}
    await client.rpush(RESULTS_KEY, json.dumps(result))
    log.info("job %s: done", job.get("id"))


async def run(client: redis.Redis, raw: str | bytes, slots: asyncio.Semaphore) -> None:
    try:
        await process(client, raw)
    except Exception:
        log.exception("job failed: %s", raw)
    finally:
        slots.release()


async def main() -> None:
    stop = asyncio.Event()

    def on_signal(name: str) -> None:
        log.info("%s: taking no new jobs, finishing those in hand", name)
        stop.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig.name)

    client = redis.Redis.from_url(REDIS_URL, password=REDIS_PASSWORD, decode_responses=True)
    slots = asyncio.Semaphore(CONCURRENCY)
    in_hand: set[asyncio.Task[None]] = set()
    log.info("taking jobs from %s, %d at once", QUEUE_KEY, CONCURRENCY)
    while True:
        # A job is taken only into a free slot: the others stay in the list, where other workers
        # can take them and the sidecar counts them, which is what the pool scales on.
        await slots.acquire()
        if stop.is_set():
            break
        try:
            # Never cancelled: a BLPOP cancelled after Redis popped the job would lose it. It
            # times out instead, and the loop looks at `stop` again.
            popped = await client.blpop([QUEUE_KEY], timeout=POLL_SECONDS)
        except RedisConnectionError as error:
            slots.release()
            log.warning("redis: %s; retrying in 1 s", error)
            await asyncio.sleep(1)
            continue
        if popped is None:
            slots.release()
            continue
        if stop.is_set():
            # Popped after SIGTERM: give it back, at the head of the list, unstarted.
            await client.lpush(QUEUE_KEY, popped[1])
            break
        task = asyncio.create_task(run(client, popped[1], slots))
        in_hand.add(task)
        task.add_done_callback(in_hand.discard)

    await asyncio.gather(*in_hand)
    await client.aclose()
    log.info("stopped")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    asyncio.run(main())
