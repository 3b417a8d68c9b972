"""Helpers for the app's tests and crash drills: a small demo project and a real server subprocess."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from cincer.app.project import SessionConfig, create_demo
from cincer.models import TrainConfig

QUICK = SessionConfig(model="fullnet", train=TrainConfig(epochs=10, lr=1e-2), seed=0)


def small_demo(root: str | Path, *, size: int = 300, n_known: int = 60, dataset: str = "digits",
               config: SessionConfig | None = None) -> Path:
    """A quick demo project (digits, 20% noise, ``size`` examples, few epochs)."""
    return create_demo(root, dataset=dataset, limit=size, n_known=n_known, config=config or QUICK)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``cincer serve`` in a subprocess on a loopback port; ``kill()`` is SIGKILL, ``start()`` restarts."""

    def __init__(self, project: Path, *, port: int | None = None, extra: list[str] | None = None,
                 log: Path | None = None) -> None:
        self.project, self.port = Path(project), port or free_port()
        self.extra = extra or []
        self.log = log
        self.proc: subprocess.Popen | None = None
        self.url = f"http://127.0.0.1:{self.port}"
        self.starts = 0

    def start(self, timeout: float = 60.0) -> ServerProcess:
        env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
        command = [sys.executable, "-m", "cincer.cli", "serve", "--project", str(self.project),
                   "--port", str(self.port), *self.extra]
        if self.log:
            with open(self.log, "ab") as out:  # the child keeps its own handle
                self.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        else:
            self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, env=env)
        self.starts += 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"cincer serve exited with {self.proc.returncode} (log: {self.log})")
            try:
                if httpx.get(self.url + "/healthz", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"cincer serve did not answer within {timeout} s")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
