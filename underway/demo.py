"""The demo app behind `underway demo`: one task per feature, with adjustable delays.

Every task takes its pace as a parameter (`pause`, `tokens_per_second`) so that a
person gets time to watch the dashboard while a test can run the same code in
milliseconds. (Not `delay`: `Underway.submit` takes that keyword for itself.) The
store is chosen by the command line; by default the jobs live in `underway-demo.db`
in the current folder, away from a real app's `underway.db`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from . import Job, Underway

uw = Underway("sqlite:///underway-demo.db", name="underway-demo")


@uw.task(keep_for="1h")
def count(job: Job, to: int = 10, pause: float = 0.5) -> Iterator[int]:
    """Count from 1 to `to`, streaming each number (a generator task)."""
    for n in range(1, to + 1):
        # Sleeping on the cancel flag lets a cancel cut the pause short.
        job.wait_cancelled(pause)
        job.check_cancelled()
        job.progress(n, total=to, message=f"counted to {n}")
        yield n


@uw.task(keep_for="1h", retries=2)
def long_process(job: Job, steps: int = 10, pause: float = 1.0) -> str:
    """Build "1 2 3 ... 10" one step at a time, emitting each interim result."""
    text = ""
    job.progress(0, total=steps, message="starting")
    for n in range(1, steps + 1):
        job.wait_cancelled(pause)
        job.check_cancelled()  # raises Cancelled: the job ends as cancelled
        text = f"{text} {n}".strip()
        job.emit(text)
        job.progress(n, message=f"step {n} of {steps}")
    return text


@uw.task(keep_for="1h")
def batch_files(
    job: Job, folder: str | None = None, files: int = 20, pause: float = 0.2
) -> dict[str, int]:
    """Process every file of `folder` (or of a temporary folder of `files` sample files)."""
    with tempfile.TemporaryDirectory(prefix="underway-demo-") as scratch:
        root = Path(folder) if folder else _sample_folder(Path(scratch), files)
        if not root.is_dir():
            raise NotADirectoryError(f"not a folder: {root}")
        paths = sorted(p for p in root.iterdir() if p.is_file())
        total_bytes = 0
        job.progress(0, total=len(paths), message=f"0 files (0%) of {len(paths)}")
        for n, path in enumerate(paths, 1):
            job.wait_cancelled(pause)
            job.check_cancelled()
            size = path.stat().st_size
            lines = path.read_bytes().count(b"\n")
            total_bytes += size
            job.emit({"file": path.name, "bytes": size, "lines": lines})
            percent = round(100 * n / len(paths))
            job.progress(n, message=f"{n} files ({percent}%)")
        return {"files": len(paths), "bytes": total_bytes}


def _sample_folder(base: Path, files: int) -> Path:
    for n in range(1, files + 1):
        body = "".join(f"line {i} of sample file {n}\n" for i in range(1, n + 1))
        (base / f"sample-{n:03d}.txt").write_text(body)
    return base


ANSWER = (
    "underway runs long operations for web applications. A request starts a job and "
    "returns at once; the job reports progress and streams partial output, like this "
    "answer, one token at a time. Anyone allowed can watch it, cancel it, or collect "
    "its result later, and finished jobs expire on their own."
)


@uw.task(keep_for="1h")
def chat(job: Job, prompt: str = "What does underway do?", tokens_per_second: float = 30.0) -> str:
    """A fake chat model: streams the tokens of a canned answer to `prompt`."""
    tokens = _tokens(f"You asked: {prompt!r}. {ANSWER}")
    pause = 1.0 / tokens_per_second if tokens_per_second > 0 else 0.0
    job.progress(0, total=len(tokens), message="thinking")
    for n, token in enumerate(tokens, 1):
        job.wait_cancelled(pause)
        job.check_cancelled()
        job.emit(token)
        job.progress(n, message=f"{n} tokens")
    return "".join(tokens)


def _tokens(text: str) -> list[str]:
    """Split into word-sized pieces that keep their leading space, as model tokens do."""
    words = text.split(" ")
    return [words[0], *(f" {w}" for w in words[1:])]


@uw.task(executor="process", keep_for="1h")
def render(job: Job, width: int = 160, height: int = 60, iterations: int = 1000) -> dict[str, int]:
    """Draw the Mandelbrot set in characters, streaming each row; CPU-bound Python, so it
    runs on the process executor and leaves the web process responsive."""
    job.progress(0, total=height, message=f"rendering {width}x{height} in pid {os.getpid()}")
    shades = " .:-=+*#%@"
    inside = 0
    for y in range(height):
        job.check_cancelled()
        ci = (y / max(1, height - 1)) * 2.4 - 1.2
        row = []
        for x in range(width):
            cr = (x / max(1, width - 1)) * 3.5 - 2.5
            zr = zi = 0.0
            n = 0
            while n < iterations and zr * zr + zi * zi <= 4.0:
                zr, zi = zr * zr - zi * zi + cr, 2 * zr * zi + ci
                n += 1
            inside += n == iterations
            row.append(shades[n * (len(shades) - 1) // iterations])
        job.emit("".join(row))
        job.progress(y + 1, message=f"row {y + 1} of {height}")
    return {"width": width, "height": height, "inside": inside, "pid": os.getpid()}


@uw.task(keep_for="1h")
def fail(job: Job, after: int = 3, pause: float = 0.5) -> None:
    """Make a little progress, then fail with a clear error (to show how errors look)."""
    for n in range(1, after + 1):
        job.wait_cancelled(pause)
        job.check_cancelled()
        job.progress(n, total=after * 2, message=f"step {n}, about to go wrong")
    raise RuntimeError(f"the demo task failed on purpose after {after} steps")
