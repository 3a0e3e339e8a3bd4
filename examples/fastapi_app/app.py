from contextlib import asynccontextmanager

from fastapi import FastAPI

from underway import Job, Underway
from underway.http import asgi

uw = Underway()  # jobs live in ./underway.db; Underway("redis://host/0") shares them


@uw.task(keep_for="1h")
def countdown(job: Job, seconds: int = 10) -> str:
    """Count down, one second per step; a cancel stops it between seconds."""
    for done in range(seconds):
        job.progress(done, total=seconds, message=f"{seconds - done}s left")
        job.wait_cancelled(1.0)  # sleeps, but wakes at once when cancelled
        job.check_cancelled()
    return "liftoff"


@asynccontextmanager
async def lifespan(app: FastAPI):
    uw.start()  # embedded workers: this process runs the jobs itself
    yield
    uw.stop()


app = FastAPI(lifespan=lifespan)
app.mount("/jobs", asgi(uw))
