"""A project's annotators and their tokens (``cincer project user add|list|revoke``).

``DIR/users.json`` lists the annotators: a short public id, the name written in the audit log, and
the token's PBKDF2-SHA256 hash with its own salt; the token itself is printed once by ``user add``
and never stored. A token reads ``<id>.<secret>``: the id finds the annotator without trying every
hash, the secret (24 random bytes) is what is checked. A revoked annotator keeps their entry (the
audit log still names them) but their token is refused. The server re-reads the file when it
changes, so adding or revoking works while it runs; a verified token is remembered in memory (as
its SHA-256) so the slow hash runs once per token and process.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import tempfile
import threading
from datetime import datetime, timezone
from pathlib import Path

from ..errors import CincerError

USERS_FILE = "users.json"
ITERATIONS = 100_000


def _hash(secret: str, salt: bytes, iterations: int) -> str:
    return hashlib.pbkdf2_hmac("sha256", secret.encode(), salt, iterations).hex()


def check_name(name: str) -> str:
    name = name.strip()
    if not 1 <= len(name) <= 64 or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise CincerError(f"an annotator's name must be 1 to 64 printable characters, got {name!r}")
    return name


class Annotators:
    """The annotators of one project folder (thread-safe)."""

    def __init__(self, root: str | Path) -> None:
        self.path = Path(root) / USERS_FILE
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._users: list[dict] = []
        self._verified: dict[str, str] = {}  # sha256(token) -> annotator id

    # ------------------------------------------------------------------ file
    def users(self) -> list[dict]:
        """Every annotator ever added (revoked ones included), reloaded if the file changed."""
        with self._lock:
            self._reload()
            return [dict(u) for u in self._users]

    def active(self) -> list[dict]:
        return [u for u in self.users() if u.get("revoked") is None]

    def _reload(self) -> None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._stamp, self._users, self._verified = None, [], {}
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        try:
            data = json.loads(self.path.read_text())
            users = data["users"]
            assert isinstance(users, list)
        except (OSError, ValueError, KeyError, TypeError, AssertionError) as err:
            raise CincerError(f"cannot read {self.path}: {err}") from None
        self._stamp, self._users, self._verified = stamp, users, {}

    def _write(self, users: list[dict]) -> None:
        fd, tmp = tempfile.mkstemp(prefix=".users-", dir=self.path.parent)
        with os.fdopen(fd, "w") as f:
            json.dump({"version": 1, "users": users}, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)  # readers see the old file or the new one, never half of it

    # ------------------------------------------------------------------ changes (CLI)
    def add(self, name: str) -> str:
        """Add an annotator; returns their token (shown once, stored hashed)."""
        name = check_name(name)
        with self._lock:
            self._reload()
            if any(u["name"] == name and u.get("revoked") is None for u in self._users):
                raise CincerError(f"annotator {name!r} already exists (revoke them first to issue a new token)")
            ids = {u["id"] for u in self._users}
            uid = secrets.token_hex(4)
            while uid in ids:
                uid = secrets.token_hex(4)
            secret, salt = secrets.token_urlsafe(24), secrets.token_bytes(16)
            users = self._users + [{"id": uid, "name": name, "salt": salt.hex(), "iterations": ITERATIONS,
                                    "hash": _hash(secret, salt, ITERATIONS), "revoked": None,
                                    "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}]
            self._write(users)
            self._stamp = None
        return f"{uid}.{secret}"

    def revoke(self, name: str) -> None:
        with self._lock:
            self._reload()
            hits = [u for u in self._users if u["name"] == name and u.get("revoked") is None]
            if not hits:
                raise CincerError(f"no active annotator named {name!r}")
            stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
            self._write([{**u, "revoked": stamp} if u in hits else u for u in self._users])
            self._stamp = None

    # ------------------------------------------------------------------ requests
    def authenticate(self, token: str) -> str | None:
        """The name of the active annotator whose token this is, else ``None``."""
        uid, _, secret = token.partition(".")
        if not uid or not secret or len(token) > 200:
            return None
        digest = hashlib.sha256(token.encode()).hexdigest()
        with self._lock:
            self._reload()
            user = next((u for u in self._users if u["id"] == uid and u.get("revoked") is None), None)
            if user is None:
                return None
            if self._verified.get(digest) == uid:
                return user["name"]
        expected = _hash(secret, bytes.fromhex(user["salt"]), int(user.get("iterations", ITERATIONS)))
        if not hmac.compare_digest(expected, user["hash"]):
            return None
        with self._lock:
            self._verified[digest] = uid
        return user["name"]
