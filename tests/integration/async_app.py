"""A FastAPI app whose endpoints await jobs (`result_async`), for test_async.py: run
by uvicorn in a process of its own, on the store UNDERWAY_STORE names."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator

from fastapi import FastAPI

from underway import Job, Underway

uw = Underway(workers=110)


@uw.task
def sleepy(job: Job, seconds: float = 1.0) -> str:
    time.sleep(seconds)
    return "slept"


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # The jobs run in an `underway worker` process (ASYNC_APP_WORKERS=0), so that this
    # process only awaits them; or here, embedded. batch=1: a slot that claimed a batch
    # of these 1 s jobs would start them one after another, and this is about waiting.
    embedded = os.environ.get("ASYNC_APP_WORKERS", "1") != "0"
    if embedded:
        uw.start(batch=1)
    try:
        yield
    finally:
        uw.stop()


app = FastAPI(lifespan=lifespan)


@app.get("/healthz")
async def healthz() -> dict[str, bool]:
    return {"ok": True}


@app.post("/sleep")
async def sleep() -> dict[str, str]:
    # A submission is one store write: off the loop too, as any blocking call.
    job = await asyncio.to_thread(uw.submit, "sleepy", seconds=1.0)
    return {"result": await job.result_async(timeout=30)}
