"""A stand-in for an LLM server, so that the gateway can be run and tested without a GPU.

It answers by echoing the prompt back, one word per token: deterministic, so a test knows the
answer. The first token comes after FIRST_TOKEN_DELAY seconds and each next one TOKEN_DELAY
seconds later, so a call lasts seconds, as a model's does, while using almost no CPU.

  POST /generate  {"prompt": str, "max_tokens": int}
      -> application/x-ndjson, one JSON object a line: {"token": "..."} per token, then
         {"finish_reason": "stop" | "length", "prompt_tokens": n, "completion_tokens": m}
  GET  /healthz
  GET  /stats     -> {"active", "completed", "cancelled"}: generations running, finished, and
                     abandoned by their caller
"""

import asyncio
import json
import os
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

FIRST_TOKEN_DELAY = float(os.environ.get("FIRST_TOKEN_DELAY", "0.3"))
TOKEN_DELAY = float(os.environ.get("TOKEN_DELAY", "0.05"))

app = FastAPI(title="fake model")
stats = {"active": 0, "completed": 0, "cancelled": 0}


class GenerateRequest(BaseModel):
    prompt: str
    max_tokens: int = Field(default=256, ge=1, le=4096)


async def generate(prompt: str, max_tokens: int) -> AsyncIterator[str]:
    words = prompt.split()
    tokens = [word if i == 0 else f" {word}" for i, word in enumerate(words[:max_tokens])]
    stats["active"] += 1
    finished = False
    try:
        await asyncio.sleep(FIRST_TOKEN_DELAY)
        for i, token in enumerate(tokens):
            if i > 0:
                await asyncio.sleep(TOKEN_DELAY)
            yield json.dumps({"token": token}) + "\n"
        end = {
            "finish_reason": "length" if len(words) > max_tokens else "stop",
            "prompt_tokens": len(words),
            "completion_tokens": len(tokens),
        }
        yield json.dumps(end) + "\n"
        finished = True
    finally:
        # A caller that hangs up cancels this generator (Starlette sees the disconnect): counted,
        # so that the gateway's tests can tell that a client leaving stops the model call.
        stats["active"] -= 1
        stats["completed" if finished else "cancelled"] += 1


@app.post("/generate")
async def generate_endpoint(request: GenerateRequest) -> StreamingResponse:
    return StreamingResponse(
        generate(request.prompt, request.max_tokens), media_type="application/x-ndjson"
    )


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/stats")
async def get_stats() -> dict[str, int]:
    return stats
