"""Web requests while `underway worker` runs CPU-bound jobs on the same machine, by hand:

    python bench/bench_nice.py [--rounds 3] [--requests 300] [--nice 5]

A web process (`underway serve underway.demo:uw --no-workers`) and a worker process
(`underway worker underway.demo:uw --workers 2`) share a SQLite file, each started in
a session of its own, as a process manager starts services. The worker runs two
`render` jobs on the process executor, which keep both cores busy; meanwhile this
process times `GET /v1/jobs/{id}` against the web process, one request at a time.
Rounds alternate the worker's `--nice 0` (as started) and `--nice N` (the default), so
both see the same machine; each prints the p50 and p99 of a round, and the end prints
their medians, the ratio of the two, and the same requests with no jobs running (the
floor).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
APP = "underway.demo:uw"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "underway", *args],
            cwd=ROOT,
            stdout=out,
            stderr=out,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def until(check: object, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


def timings(client: httpx.Client, path: str, n: int) -> tuple[float, float]:
    """p50 and p99 of `n` GETs one after the other, in ms."""
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        client.get(path).raise_for_status()
        samples.append((time.perf_counter() - started) * 1e3)
    samples.sort()
    return samples[len(samples) // 2], samples[int(len(samples) * 0.99)]


def loaded_round(
    client: httpx.Client, store: str, nice: int, n: int, logs: Path
) -> tuple[float, float]:
    worker = start(["worker", APP, "--store", store, "--workers", "2", "--nice", str(nice)], logs)
    try:
        params = {"width": 400, "height": 400, "iterations": 100_000}
        ids = [client.post("/v1/tasks/render/jobs", json=params).json()["id"] for _ in range(2)]

        def both_computing() -> bool:  # each child has said so in its first progress
            jobs = [client.get(f"/v1/jobs/{i}").json() for i in ids]
            return all(j["state"] == "running" and j["progress"].get("message") for j in jobs)

        until(both_computing, "the two render jobs to compute")
        result = timings(client, f"/v1/jobs/{ids[0]}", n)
        for job_id in ids:
            client.post(f"/v1/jobs/{job_id}/cancel")
        return result
    finally:
        stop(worker)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--nice", type=int, default=5, help="the worker's --nice to compare")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-nice-") as tmp:
        folder = Path(tmp)
        store = f"sqlite:///{folder / 'jobs.db'}"
        port = free_port()
        web = start(["serve", APP, "--no-workers", "--store", store, "--port", str(port)],
                    folder / "web.log")  # fmt: skip
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:

                def healthy() -> bool:
                    try:
                        return client.get("/healthz").status_code == 200
                    except httpx.HTTPError:
                        return False

                until(healthy, "the web process")
                probe = client.post("/v1/tasks/count/jobs", json={"to": 1, "pause": 0}).json()["id"]
                floor = timings(client, f"/v1/jobs/{probe}", args.requests)
                print(f"no jobs running: p50 {floor[0]:.2f} ms, p99 {floor[1]:.2f} ms")
                seen: dict[int, list[tuple[float, float]]] = {0: [], args.nice: []}
                for r in range(args.rounds):
                    for nice in (0, args.nice) if r % 2 == 0 else (args.nice, 0):
                        got = loaded_round(client, store, nice, args.requests, folder / "w.log")
                        seen[nice].append(got)
                        print(f"round {r + 1}, worker at --nice {nice}: "
                              f"p50 {got[0]:.2f} ms, p99 {got[1]:.2f} ms")  # fmt: skip
        finally:
            stop(web)
    p50 = {k: statistics.median(v[0] for v in vs) for k, vs in seen.items()}
    p99 = {k: statistics.median(v[1] for v in vs) for k, vs in seen.items()}
    print(f"medians: --nice 0 p50 {p50[0]:.2f} / p99 {p99[0]:.2f} ms; --nice {args.nice} "
          f"p50 {p50[args.nice]:.2f} / p99 {p99[args.nice]:.2f} ms")  # fmt: skip
    print(f"--nice {args.nice} / --nice 0: p50 {p50[args.nice] / p50[0]:.2f}x, "
          f"p99 {p99[args.nice] / p99[0]:.2f}x; against no jobs running: "
          f"p50 {p50[args.nice] / floor[0]:.2f}x and {p50[0] / floor[0]:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
