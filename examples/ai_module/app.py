"""A generative model behind FastAPI, run as jobs: start, poll, read the reply so far,
cancel; plus an explore page with Start and Cancel buttons. See README.md.

    uvicorn --factory examples.ai_module.app:create_app      # then open localhost:8000
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Response
from fastapi.responses import FileResponse
from pydantic import BaseModel

from underway import Job, JobFinished, JobNotFound, JobRecord, Underway
from underway.http import asgi

from .model import FakeLanguageModel

EXPLORE_PAGE = Path(__file__).with_name("explore.html")


class GenerateRequest(BaseModel):
    prompt: str
    max_tokens: int = 400


def create_app(store: str | None = None, tokens_per_second: float | None = None) -> FastAPI:
    uw = Underway(store or os.environ.get("UNDERWAY_STORE", "sqlite:///underway.db"))
    if tokens_per_second is None:
        tokens_per_second = float(os.environ.get("TOKENS_PER_SECOND", "4"))
    model = FakeLanguageModel(tokens_per_second)

    @uw.task(keep_for="1h")
    def generate(job: Job, prompt: str, max_tokens: int = 400) -> str:
        """Generate a reply to `prompt`, streaming each token as it comes."""
        job.progress(0, message="thinking")
        tokens: list[str] = []
        for token in model.generate(prompt, max_tokens):
            job.check_cancelled()  # a cancel stops the model between two tokens
            tokens.append(token)
            job.emit(token)  # an interim result: every token is kept and streamed
            job.progress(len(tokens), message=f"{len(tokens)} tokens")
        return "".join(tokens)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        uw.start()  # the model runs on worker threads of this process
        yield
        uw.stop(drain=5)

    app = FastAPI(title="Text generation", lifespan=lifespan)
    # The generic jobs API (SSE, long poll, ...) that the explore page's element uses.
    app.mount("/jobs", asgi(uw))

    def status(record: JobRecord, response: Response) -> dict[str, Any]:
        """The job as this module reports it: its state and the reply so far."""
        tokens = uw.output(record.id)
        if not record.finished:
            response.headers["Retry-After"] = "1"
        return {
            "id": record.id,
            "state": record.state.value,
            "reply": "".join(tokens),
            "tokens": len(tokens),
            "error": record.error.message if record.error else None,
        }

    def find(job_id: str) -> JobRecord:
        try:
            return uw.get(job_id)
        except JobNotFound:
            raise HTTPException(404, f"no generation {job_id}") from None

    @app.post("/generate", status_code=202)
    def start(request: GenerateRequest, response: Response) -> dict[str, Any]:
        job = uw.submit("generate", prompt=request.prompt, max_tokens=request.max_tokens)
        response.headers["Location"] = f"/generate/{job.id}"
        return status(job.record, response)

    @app.get("/generate/{job_id}")
    def poll(job_id: str, response: Response) -> dict[str, Any]:
        return status(find(job_id), response)

    @app.post("/generate/{job_id}/cancel", status_code=202)
    def cancel(job_id: str, response: Response) -> dict[str, Any]:
        find(job_id)
        try:
            return status(uw.cancel(job_id), response)
        except JobFinished as exc:
            raise HTTPException(409, f"generation {job_id} already ended") from exc

    @app.get("/", include_in_schema=False)
    def explore() -> FileResponse:
        return FileResponse(EXPLORE_PAGE)

    return app
