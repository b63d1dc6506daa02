"""Who is using the web app: sign-in with an API key, browser sessions, and the CSRF token of each.

The keys are the server's (`tunesmith serve keys create`). Every page needs a sign-in with a key,
and actions (train, eval, promote, rollback, approve, abort) need a key with the `admin` scope.
Scripts may send `Authorization: Bearer KEY` instead of signing in. With no active key nobody gets
in, and the sign-in page says how to make one. Only `ui.auth: none`, chosen at start-up on a
loopback address, opens the app to whoever can reach it.

A session lives in this process only: the cookie holds a random token, never the key; revoking a
key ends its sessions at the next request.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from dataclasses import dataclass

from tunesmith.serve.keys import NO_KEY_HELP, OPEN, Auth, Caller, KeyRing, hash_key
from tunesmith.workspace import Workspace

COOKIE = "tunesmith_ui"
REFRESH_SECONDS = 2.0  # how stale the list of active keys may be (revocations apply within this)


@dataclass
class Session:
    token: str
    csrf: str
    key_hash: str | None  # None: an anonymous session of an open app (it still carries a CSRF token)
    expires: float


class Sessions:
    """The active keys (re-read every few seconds) and the browser sessions signed in with them."""

    def __init__(self, workspace: Workspace, hours: float, auth: Auth = "keys") -> None:
        self.ring = KeyRing(workspace, auth)
        self.seconds = hours * 3600
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()
        self._read_at = time.monotonic()

    def _fresh(self) -> None:
        if time.monotonic() - self._read_at > REFRESH_SECONDS:
            self.ring.refresh()
            self._read_at = time.monotonic()

    @property
    def open(self) -> bool:
        self._fresh()
        return self.ring.open

    def no_key_error(self) -> str | None:
        """The sign-in page's message when no key is active, so nobody can sign in."""
        self._fresh()
        return (
            f"No API key is active in this store, so nobody can sign in: {NO_KEY_HELP}."
            if self.ring.empty
            else None
        )

    def new(self, key_hash: str | None) -> Session:
        entry = Session(
            token=secrets.token_urlsafe(32),
            csrf=secrets.token_urlsafe(24),
            key_hash=key_hash,
            expires=time.time() + self.seconds,
        )
        with self._lock:
            now = time.time()
            for token in [t for t, s in self._sessions.items() if s.expires < now]:
                del self._sessions[token]
            self._sessions[entry.token] = entry
        return entry

    def get(self, token: str | None) -> Session | None:
        if not token:
            return None
        with self._lock:
            entry = self._sessions.get(token)
        if entry is None or entry.expires < time.time():
            return None
        return entry

    def end(self, token: str | None) -> None:
        with self._lock:
            self._sessions.pop(token or "", None)

    def sign_in(self, secret: str) -> Session | None:
        """A new session for an active key; None when the key is not one."""
        self.ring.refresh()
        self._read_at = time.monotonic()
        if self.ring.open or self.ring.authenticate(secret.strip()) is None:
            return None
        return self.new(hash_key(secret.strip()))

    def caller(self, entry: Session | None, bearer: str | None) -> Caller | None:
        """Who is asking: the bearer key's caller, the session's key's, everyone when open; else None."""
        self._fresh()
        if self.ring.open:
            return OPEN
        if bearer:
            return self.ring.authenticate(bearer)
        if entry is None or entry.key_hash is None:
            return None
        return self.ring.by_hash(entry.key_hash)  # a revoked key's session ends here


def same_token(a: str | None, b: str | None) -> bool:
    return bool(a) and bool(b) and hmac.compare_digest(str(a), str(b))
