"""An OpenAI-style chat completions gateway in front of a model server.

  POST /v1/chat/completions  {"messages": [{"role", "content"}...], "stream", "max_tokens"}
      stream: Server-Sent Events, `data: {chunk}` per token as the model sends it, then
      `data: [DONE]`; otherwise one `chat.completion` object.
  GET  /healthz

Each request spends seconds awaiting the model and almost no CPU, so one uvicorn worker serves
dozens at once; the asyncpool sidecar in front of it admits `concurrency` of them and queues the
rest. The model is at MODEL_URL (default http://fake-model:8080), speaking fake_model.py's
protocol: POST /generate, newline-delimited JSON events.
"""

import json
import os
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing, asynccontextmanager
from typing import Any, Literal, NotRequired, TypedDict

import httpx
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

MODEL_URL = os.environ.get("MODEL_URL", "http://fake-model:8080")
MODEL_NAME = os.environ.get("MODEL_NAME", "fake-model")


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(BaseModel):
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    # Bounds the longest stream, which the pool's workerTimeout and drainTimeout are sized for.
    max_tokens: int = Field(default=256, ge=1, le=4096)


class ModelEvent(TypedDict):
    """One line of the model's answer: a token, or the last line with finish_reason."""

    token: NotRequired[str]
    finish_reason: NotRequired[str]
    prompt_tokens: NotRequired[int]
    completion_tokens: NotRequired[int]


class State(TypedDict):
    model: httpx.AsyncClient


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[State]:
    # One client for the process: every request shares its pool of keep-alive connections. Its
    # default limit (100 connections) is above the pool's concurrency, which the sidecar
    # enforces, so no request waits here. The read timeout is the longest pause between tokens.
    timeout = httpx.Timeout(10.0, read=60.0)
    async with httpx.AsyncClient(base_url=MODEL_URL, timeout=timeout) as client:
        yield {"model": client}


app = FastAPI(title="llm gateway", lifespan=lifespan)


def prompt_of(messages: list[Message]) -> str:
    return "\n".join(f"{m.role}: {m.content}" for m in messages)


async def model_events(
    client: httpx.AsyncClient, prompt: str, max_tokens: int
) -> AsyncGenerator[ModelEvent, None]:
    """The model's events as it sends them. Closing this generator (the client left) closes the
    upstream response, and with it the model's generation."""
    body = {"prompt": prompt, "max_tokens": max_tokens}
    try:
        async with client.stream("POST", "/generate", json=body) as response:
            if response.status_code != 200:
                raise HTTPException(502, f"the model answered {response.status_code}")
            async for line in response.aiter_lines():
                if line:
                    yield json.loads(line)
    except httpx.HTTPError as error:
        raise HTTPException(502, f"the model failed: {error!r}") from error


def chunk(completion_id: str, created: int, delta: dict[str, str], finish: str | None) -> str:
    payload = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": MODEL_NAME,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return f"data: {json.dumps(payload)}\n\n"


async def sse(
    first: ModelEvent, events: AsyncGenerator[ModelEvent, None], completion_id: str, created: int
) -> AsyncIterator[str]:
    # aclosing: however this stream ends (done, an error, or Starlette cancelling it when the
    # client disconnects), the model's stream is closed at once, not when the garbage collector
    # gets to it: the model stops generating for a client that is gone.
    async with aclosing(events):
        event: ModelEvent | None = first
        delta: dict[str, str] = {"role": "assistant"}  # OpenAI sends the role with the first
        while event is not None:
            if "token" in event:
                yield chunk(completion_id, created, {**delta, "content": event["token"]}, None)
                delta = {}
            else:
                yield chunk(completion_id, created, {}, event.get("finish_reason", "stop"))
            event = await anext(events, None)
    yield "data: [DONE]\n\n"


@app.post("/v1/chat/completions", response_model=None)
async def chat_completions(
    body: ChatRequest, request: Request
) -> StreamingResponse | dict[str, Any]:
    client: httpx.AsyncClient = request.state.model
    events = model_events(client, prompt_of(body.messages), body.max_tokens)
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    # Await the model's first event before answering, so that a model that is down or refuses
    # gives the client a 502, not a 200 followed by a broken stream.
    first = await anext(events, None)
    if first is None:
        raise HTTPException(502, "the model sent nothing")
    if body.stream:
        return StreamingResponse(
            sse(first, events, completion_id, created),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache"},
        )
    async with aclosing(events):
        answer = [first] + [event async for event in events]
    end = answer[-1]
    usage = {
        "prompt_tokens": end.get("prompt_tokens", 0),
        "completion_tokens": end.get("completion_tokens", 0),
    }
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": MODEL_NAME,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "".join(e.get("token", "") for e in answer),
                },
                "finish_reason": end.get("finish_reason", "stop"),
            }
        ],
        "usage": {**usage, "total_tokens": usage["prompt_tokens"] + usage["completion_tokens"]},
    }


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    # The process only: a model outage must not get healthy workers restarted.
    return {"status": "ok"}
