"""A plain ASGI app for the sidecar's tests and benchmarks, served by uvicorn.

Routes (the /_stats and /_reset ones are meant to be called on the app directly, not through
the sidecar, so that they do not count as load):
  GET  /hello                  -> "ok" at once (benchmarks)
  GET  /sleep?s=SECONDS&id=ID  -> awaits asyncio.sleep, then answers {"id": ID, "start": N}
  GET  /stream?n=N&interval=S  -> text/event-stream, one "data: i" event every S seconds
  POST /upload                 -> reads the body as it comes, answers {"bytes": N}
  POST /echo                   -> streams the body back chunk by chunk
  WS   /ws                     -> echoes every text or binary message
  GET  /_stats                 -> {"current", "max", "served", "order"}: concurrency seen by the app
  POST /_reset                 -> clears the stats
"""

import asyncio
import json
from urllib.parse import parse_qs

STATS = {"current": 0, "max": 0, "served": 0, "order": []}


async def send_json(send, status, payload):
    body = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def websocket_echo(receive, send):
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") is not None:
            await send({"type": "websocket.send", "text": message["text"]})
        else:
            await send({"type": "websocket.send", "bytes": message.get("bytes") or b""})


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "websocket":
        await websocket_echo(receive, send)
        return

    path = scope["path"]
    query = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}

    if path == "/_stats":
        await send_json(send, 200, STATS)
        return
    if path == "/_reset":
        STATS.update(current=0, max=0, served=0, order=[])
        await send_json(send, 200, STATS)
        return
    if path == "/hello":
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"2")],
            }
        )
        await send({"type": "http.response.body", "body": b"ok"})
        return

    STATS["current"] += 1
    STATS["max"] = max(STATS["max"], STATS["current"])
    start = len(STATS["order"])
    STATS["order"].append(query.get("id"))
    try:
        if path == "/sleep":
            await asyncio.sleep(float(query.get("s", "0.1")))
            headers = {k.decode(): v.decode() for k, v in scope["headers"]}
            await send_json(
                send,
                200,
                {
                    "id": query.get("id"),
                    "start": start,
                    "xff": headers.get("x-forwarded-for"),
                    "xfp": headers.get("x-forwarded-proto"),
                    "connection": headers.get("connection"),
                    "host": headers.get("host"),
                    "xdrop": headers.get("x-drop"),
                },
            )
        elif path == "/stream":
            n = int(query.get("n", "5"))
            interval = float(query.get("interval", "0.2"))
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")],
                }
            )
            for i in range(n):
                await send({"type": "http.response.body", "body": f"data: {i}\n\n".encode(), "more_body": True})
                await asyncio.sleep(interval)
            await send({"type": "http.response.body", "body": b""})
        elif path == "/upload":
            total = 0
            more = True
            while more:
                message = await receive()
                total += len(message.get("body", b""))
                more = message.get("more_body", False)
            await send_json(send, 200, {"bytes": total})
        elif path == "/echo":
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"application/octet-stream")],
                }
            )
            more = True
            while more:
                message = await receive()
                chunk = message.get("body", b"")
                more = message.get("more_body", False)
                if chunk:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        else:
            await send_json(send, 404, {"error": "not found"})
    finally:
        STATS["current"] -= 1
        STATS["served"] += 1
