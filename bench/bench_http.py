"""HTTP API speed, run by hand: `python bench/bench_http.py`.

One uvicorn server process serves both the underway API and a bare Starlette JSON
endpoint (/bare) added to the same app, so the ratio compares like with like. The load
comes from another process speaking raw HTTP/1.1 over asyncio streams, cheap enough
not to be the bottleneck. Three figures:

1. `GET /v1/jobs/{id}` requests/s against the bare endpoint (target ratio >= 0.5);
2. 1,000 SSE watchers on 100 jobs reporting progress: how late each watcher sees a
   job's final state after it finished (target: all within 1 s), and the server's
   peak RSS (target < 300 MB);
3. submit with `Prefer: wait=5` of a no-op job: p50 round trip (target <= 5 ms);
4. 5,000 idle SSE streams: the server's CPU while they only ping (target < 5% of a
   core), over two ping intervals so that every stream's pings count whatever their
   phase, and `GET /v1/jobs/{id}` p50 with them open (target <= 20 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


# -- the server process ----------------------------------------------------------------
def serve(port: int, db: str, workers: int) -> None:
    import uvicorn
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from underway import Job, Underway
    from underway.http import asgi

    uw = Underway(f"sqlite:///{db}", workers=workers)

    @uw.task
    def parked(job: Job) -> None:  # runs, silent, until cancelled
        job.wait_cancelled(3600)

    @uw.task
    def noop() -> None:
        pass

    @uw.task
    def ticker(job: Job, start_at: float, steps: int = 20, interval: float = 0.05) -> int:
        time.sleep(max(0.0, start_at - time.time()))
        for i in range(steps):
            job.progress(i + 1, total=steps)
            time.sleep(interval)
        return steps

    sample = {"id": "01J0000000000000000000000", "task": "noop", "state": "succeeded"}

    async def bare(request: Any) -> JSONResponse:
        return JSONResponse(sample)

    # The bare endpoint goes into the API's own app, so both answer through the same
    # middleware stack and the ratio measures the API's own work.
    app = asgi(uw)
    app.router.routes.insert(0, Route("/bare", bare))
    uw.start()
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# -- a small raw HTTP/1.1 client -------------------------------------------------------
class Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Conn:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        return cls(reader, writer)

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        status = int((await self.reader.readline()).split()[1])
        head: dict[str, str] = {}
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            head[name.strip().lower()] = value.strip()
        data = await self.reader.readexactly(int(head.get("content-length", "0")))
        return status, head, data

    def close(self) -> None:
        self.writer.close()


async def requests_per_second(port: int, path: str, seconds: float, conns: int) -> float:
    done = 0
    stop = time.monotonic() + seconds

    async def loop() -> None:
        nonlocal done
        conn = await Conn.open(port)
        while time.monotonic() < stop:
            status, _, _ = await conn.request("GET", path)
            assert status == 200, status
            done += 1
        conn.close()

    started = time.monotonic()
    await asyncio.gather(*(loop() for _ in range(conns)))
    return done / (time.monotonic() - started)


async def watch(port: int, job_id: str) -> tuple[float, str]:
    """Follow one job's events to the end; (time `done` arrived, final state)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
    writer.write(f"GET /v1/jobs/{job_id}/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    kind = ""
    try:
        while line := await reader.readline():
            text = line.decode().strip()
            if text.startswith("event:"):
                kind = text[6:].strip()
            elif text.startswith("data:") and kind == "done":
                return time.time(), json.loads(text[5:])["state"]
        raise RuntimeError("stream ended without done")
    finally:
        writer.close()


async def bench_requests(port: int, server_pid: int) -> None:
    conn = await Conn.open(port)
    _, _, body = await conn.request("POST", "/v1/tasks/noop/jobs", b"{}")
    job_id = json.loads(body)["id"]

    # 1. GET /v1/jobs/{id} against the bare endpoint.
    for path in ("/bare", f"/v1/jobs/{job_id}"):  # warm up both
        await requests_per_second(port, path, 0.5, 8)
    # Alternating short rounds, so a busy neighbour on the machine hits both alike.
    bares, apis = [], []
    for _ in range(5):
        bares.append(await requests_per_second(port, "/bare", 1.0, 16))
        apis.append(await requests_per_second(port, f"/v1/jobs/{job_id}", 1.0, 16))
    bare, api = statistics.median(bares), statistics.median(apis)
    print(f"GET bare JSON endpoint      {bare:8.0f} req/s")
    print(f"GET /v1/jobs/{{id}}           {api:8.0f} req/s   ratio {api / bare:.2f} (>= 0.5)")

    # 3. Submit with Prefer: wait=5 of a no-op job.
    conn.close()  # idle past uvicorn's keep-alive by now
    conn = await Conn.open(port)
    times = []
    for _ in range(300):
        t0 = time.perf_counter()
        status, _, body = await conn.request(
            "POST", "/v1/tasks/noop/jobs", b"{}", {"Prefer": "wait=5"}
        )
        times.append(time.perf_counter() - t0)
        assert status == 200 and json.loads(body)["state"] == "succeeded", body
    times.sort()
    p50, p90 = times[len(times) // 2] * 1000, times[int(len(times) * 0.9)] * 1000
    print(f"submit Prefer: wait=5 noop  p50 {p50:6.2f} ms  p90 {p90:6.2f} ms   (p50 <= 5 ms)")

    conn.close()


async def bench_sse(port: int, server_pid: int) -> None:
    # 2. 1,000 SSE watchers, 100 jobs reporting progress.
    conn = await Conn.open(port)
    start_at = time.time() + 4.0
    ids = []
    for _ in range(100):
        _, _, body = await conn.request(
            "POST", "/v1/tasks/ticker/jobs", json.dumps({"start_at": start_at}).encode()
        )
        ids.append(json.loads(body)["id"])
    watchers = [watch(port, ids[i % 100]) for i in range(1000)]
    results = await asyncio.gather(*watchers)
    finished: dict[str, float] = {}
    conn.close()
    conn = await Conn.open(port)
    for job in ids:
        _, _, body = await conn.request("GET", f"/v1/jobs/{job}")
        record = json.loads(body)
        finished[job] = _epoch(record["finished_at"])
    lags = sorted(results[i][0] - finished[ids[i % 100]] for i in range(1000))
    states = {state for _, state in results}
    rss = _peak_rss_mb(server_pid)
    print(
        f"SSE 1000 watchers/100 jobs  final state seen: max {lags[-1] * 1000:.0f} ms, "
        f"p50 {statistics.median(lags) * 1000:.0f} ms after finish (all <= 1000 ms); "
        f"states {sorted(states)}"
    )
    print(f"server peak RSS             {rss:.0f} MB   (< 300 MB)")
    conn.close()


async def open_stream(port: int, job_id: str) -> asyncio.StreamWriter:
    """An event stream left open and unread (its job does not change)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /v1/jobs/{job_id}/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    await writer.drain()
    while (await reader.readline()).strip():  # the headers: the stream is open
        pass
    return writer


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _latencies(port: int, path: str, n: int) -> list[float]:
    conn = await Conn.open(port)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        status, _, _ = await conn.request("GET", path)
        assert status == 200, status
        times.append(time.perf_counter() - t0)
        await asyncio.sleep(0.01)
    conn.close()
    return sorted(times)


# Two of the server's ping intervals (the API's default, 15 s): each idle stream pings
# twice in the window, wherever its pings fall.
IDLE_WINDOW = 30.0


async def bench_idle_streams(port: int, server_pid: int, streams: int = 5000) -> None:
    # 4. Idle event streams: what they cost the server while nothing happens.
    conn = await Conn.open(port)
    _, _, body = await conn.request("POST", "/v1/tasks/parked/jobs", b"{}")
    job_id = json.loads(body)["id"]  # it runs, silent, while the streams watch it
    conn.close()
    before = await _latencies(port, f"/v1/jobs/{job_id}", 200)
    writers = []
    for start in range(0, streams, 500):
        writers += await asyncio.gather(
            *(open_stream(port, job_id) for _ in range(min(500, streams - start)))
        )
    await asyncio.sleep(2.0)  # let the opening settle before measuring the idle cost
    cpu0, t0 = _cpu_seconds(server_pid), time.monotonic()
    await asyncio.sleep(IDLE_WINDOW)
    idle_cpu = (_cpu_seconds(server_pid) - cpu0) / (time.monotonic() - t0) * 100
    during = await _latencies(port, f"/v1/jobs/{job_id}", 200)
    p50_before, p50_during = before[len(before) // 2] * 1000, during[len(during) // 2] * 1000
    print(
        f"{streams} idle SSE streams     server CPU {idle_cpu:.1f}% of a core while idle, "
        f"over {IDLE_WINDOW:.0f} s (< 5%)"
    )
    print(
        f"GET /v1/jobs/{{id}} p50         {p50_during:.2f} ms with them, {p50_before:.2f} ms "
        f"without (ratio {p50_during / p50_before:.2f}; p50 <= 20 ms)"
    )
    for writer in writers:
        writer.close()


def _epoch(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.db, args.workers)
        return
    # Requests and latency on a server with the default worker pool; the watchers on
    # one with a thread per job, since the 100 jobs must all run at once.
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 20000)), hard))
    with_server(4, bench_requests)
    with_server(110, bench_sse)
    with_server(4, bench_idle_streams)


def with_server(workers: int, run: Callable[[int, int], Awaitable[None]]) -> None:
    from tests.support.services import free_port

    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        db = os.path.join(tmp, "b.db")
        server = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(port), "--db", db, "--workers", str(workers)]
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    asyncio.run(_ping(port))
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            asyncio.run(run(port, server.pid))
        finally:
            server.terminate()
            server.wait(timeout=30)


async def _ping(port: int) -> None:
    conn = await Conn.open(port)
    await conn.request("GET", "/bare")
    conn.close()


if __name__ == "__main__":
    main()
