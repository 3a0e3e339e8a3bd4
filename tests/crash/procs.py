"""Worker processes for the crash tests: spawn, SIGKILL, SIGSTOP/SIGCONT, restart."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class WorkerProcs:
    """Processes running `python -m tests.crash.crash_app` on one store."""

    def __init__(
        self, url: str, *, lease: float = 1.0, workers: int = 4, janitor: float = 0.2
    ) -> None:
        self.argv = [sys.executable, "-m", "tests.crash.crash_app", url,
                     "--lease", str(lease), "--workers", str(workers),
                     "--janitor", str(janitor)]  # fmt: skip
        self.procs: list[subprocess.Popen[str]] = []
        self.deaths = 0  # processes that died without being asked to stop

    def spawn(self, *, may_die: bool = False) -> subprocess.Popen[str]:
        """Start one process and wait for its `ready`. With `may_die`, a process that
        dies before it says so (a poison job it claimed at once) is accepted."""
        proc = subprocess.Popen(self.argv, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        self.procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if line != "ready":
            proc.wait(timeout=30)
            assert may_die, f"worker process exited ({proc.returncode}) before it was ready"
        return proc

    def alive(self) -> list[subprocess.Popen[str]]:
        return [p for p in self.procs if p.poll() is None]

    def kill(self, proc: subprocess.Popen[str]) -> None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)

    def terminate(self, proc: subprocess.Popen[str], timeout: float = 30) -> int:
        """SIGTERM (the process stops its workers cleanly) and wait for the exit."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)  # in case it was stopped
            proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
