"""One process at a time on a project: an advisory lock on ``DIR/serve.lock``.

``cincer serve`` (any :class:`~cincer.app.session.Session`) holds the lock while it runs and
``cincer project init --force`` takes it while it moves a project aside, so two servers never write
one store and a served project is never replaced under its server. The lock is ``flock`` on the
file: the kernel releases it when the holding process ends however it ends (``kill -9`` included),
so a lock left by a dead process is simply free again. The file holds the holder's PID, host and
start time, for the message another process prints. Where ``fcntl`` is missing (Windows) the PID
in the file is checked instead: a lock whose process no longer runs is taken over.
"""

from __future__ import annotations

import json
import os
import socket
from datetime import datetime, timezone
from pathlib import Path
from typing import IO

from ..errors import CincerError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = "serve.lock"


class ProjectLock:
    """``acquire`` or raise a one-line :class:`CincerError` naming the process that holds the project."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.path = self.root / LOCK_FILE
        self._file: IO[str] | None = None

    @property
    def held(self) -> bool:
        return self._file is not None

    def acquire(self, purpose: str = "serving") -> ProjectLock:
        if self._file is not None:
            return self
        f = open(self.path, "a+")  # noqa: SIM115 - kept open while the lock is held
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    f.seek(0)
                    raise CincerError(self._busy(_parse(f.read()))) from None
            else:  # pragma: no cover - no flock: trust the PID written in the file
                f.seek(0)
                info = _parse(f.read())
                if info.get("pid") not in (None, os.getpid()) and _alive(int(info["pid"])):
                    raise CincerError(self._busy(info))
            f.seek(0)
            f.truncate()
            f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "purpose": purpose,
                                "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}))
            f.flush()
        except BaseException:
            f.close()
            raise
        self._file = f
        return self

    def release(self) -> None:
        f, self._file = self._file, None
        if f is None:
            return
        try:
            f.seek(0)
            f.truncate()  # no stale PID left behind for a reader
            f.flush()
        except OSError:
            pass
        finally:
            if fcntl is not None:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)
            f.close()

    def holder(self) -> dict | None:
        """What the process holding the lock wrote about itself (``{}`` if not yet), or ``None`` when free."""
        if not self.path.is_file():
            return None
        probe = ProjectLock(self.root)
        try:
            probe.acquire("probe")
        except CincerError:
            with open(self.path) as f:
                return _parse(f.read())
        probe.release()
        return None

    def _busy(self, info: dict) -> str:
        who = f"process {info['pid']}" if "pid" in info else "another process"
        if info.get("host") and info["host"] != socket.gethostname():
            who += f" on {info['host']}"
        what = info.get("purpose", "serving")
        since = f" since {info['since']}" if "since" in info else ""
        return (f"project {self.root} is in use: {who} holds {self.path} ({what}{since}); "
                "stop that process first")

    def __enter__(self) -> ProjectLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _parse(text: str) -> dict:
    try:
        info = json.loads(text)
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}


def _alive(pid: int) -> bool:  # pragma: no cover - only without fcntl
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True
