"""A sidecar admin port that answers garbage: each connection gets the next kind of wrong answer
to `GET /queue` (or its watch stream), so that the operator's readers meet every one of them.
Used by tests/faults.rs, which redirects a worker's admin port here.

    python3 garbage_admin.py HOST PORT
"""

import asyncio
import itertools
import json
import sys

GOOD_FIELDS = {
    "version": 1,
    "queued": 0,
    "inFlight": 0,
    "capacity": 20,
    "arrivedTotal": 0,
    "completedTotal": 0,
    "busySecondsTotal": 0.0,
    "oldestInFlightSeconds": 0.0,
    "draining": False,
}


def http(status, content_type, body, length=None):
    head = (
        f"HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\n"
        f"content-length: {len(body) if length is None else length}\r\n\r\n"
    )
    return head.encode() + body


def snapshot(**changes):
    fields = dict(GOOD_FIELDS)
    fields.update(changes)
    return json.dumps(fields).encode()


# Each a list of byte strings written in turn; the connection then closes (or stays silent).
ANSWERS = [
    # Not JSON.
    [http("200 OK", "application/json", b"{\"queued\": ")],
    # JSON of the wrong shape and types.
    [http("200 OK", "application/json", b"[1, 2, 3]")],
    [http("200 OK", "application/json", snapshot(queued="many", inFlight=None))],
    # Negative counts, a version nobody knows, NaN and overflow.
    [http("200 OK", "application/json", snapshot(queued=-5, inFlight=-1))],
    [http("200 OK", "application/json", snapshot(version=999))],
    [http("200 OK", "application/json", b'{"version":1,"queued":1e400,"inFlight":NaN}')],
    # Zeros that are a lie: the reader cannot tell, but it must not be anything else either.
    # (Not sent: a well-formed zero is data, not garbage.)
    # A body far larger than any snapshot, announced and then sent.
    [http("200 OK", "application/json", b"", length=64 << 20), b"9" * (4 << 20)],
    # Not HTTP at all.
    [b"\x00\xff garbage \r\n\r\n\x16\x03\x01"],
    # A status line and then nothing.
    [b"HTTP/1.1 200 OK\r\n"],
    # A watch stream whose lines are garbage.
    [
        b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\ntransfer-encoding: chunked\r\n\r\n",
        b"0000000000000000000000010\r\n{\"queued\": -1}\n\r\n",
        b"zz\r\n",
    ],
    # An error status.
    [http("500 Internal Server Error", "text/plain", b"no")],
]


async def answer(kinds, reader, writer):
    kind = next(kinds)
    # One line per connection: the test counts them.
    print("answering", kind, flush=True)
    try:
        # Read the request head (bounded), then answer whatever it asked.
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        for part in ANSWERS[kind]:
            writer.write(part)
            await writer.drain()
    except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


async def main(host, port):
    kinds = itertools.cycle(range(len(ANSWERS)))
    server = await asyncio.start_server(lambda r, w: answer(kinds, r, w), host, port)
    print("listening", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
