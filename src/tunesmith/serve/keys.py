"""API keys: created once and shown once, stored only as SHA-256, revocable, with a scope and a group.

Scopes: `inference` (the OpenAI routes) and `admin` (alias moves, config reloads, rollouts). A key's
group (internal, beta...) is what targeting rules match on. A server with no active key is open to
anyone who can reach it (fine on 127.0.0.1; `serve.require_keys` refuses to start that way).
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass

from sqlalchemy import or_, select

from tunesmith.registry.identity import hash_key
from tunesmith.registry.versions import RegistryError, who
from tunesmith.store import ApiKey, session
from tunesmith.store.schema import utcnow
from tunesmith.workspace import Workspace

SCOPES = ("inference", "admin")
KEY_PREFIX = "tsk-"


def create_key(
    workspace: Workspace, name: str, *, admin: bool = False, group: str | None = None
) -> tuple[ApiKey, str]:
    """A new key; returns its record and the secret, which is not stored and cannot be shown again."""
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(
        id=f"key-{secrets.token_hex(4)}",
        name=name,
        key_hash=hash_key(secret),
        prefix=secret[:10],
        scopes=["inference", "admin"] if admin else ["inference"],
        user_group=group,
        created_by=who(),
        created_at=utcnow(),
    )
    with session(workspace.engine) as s:
        s.add(key)
    return key, secret


def list_keys(workspace: Workspace) -> list[ApiKey]:
    with session(workspace.engine) as s:
        return list(s.scalars(select(ApiKey).order_by(ApiKey.created_at)))


def revoke_key(workspace: Workspace, ref: str) -> ApiKey:
    """Revoke the key with id or name `ref`; its record stays."""
    with session(workspace.engine) as s:
        matches = list(s.scalars(select(ApiKey).where(or_(ApiKey.id == ref, ApiKey.name == ref))))
        active = [k for k in matches if k.revoked_at is None]
        if not active:
            raise RegistryError(
                f"no active key {ref!r}"
                + ("; it is already revoked" if matches else "; see `tunesmith serve keys list`")
            )
        if len(active) > 1:
            ids = ", ".join(k.id for k in active)
            raise RegistryError(f"{len(active)} active keys are named {ref!r}; revoke by id ({ids})")
        active[0].revoked_at = utcnow()
        return active[0]


@dataclass(frozen=True)
class Caller:
    """Who sent a request: the key's id and name (None when the server is open), scopes and group."""

    key_id: str | None
    name: str
    scopes: tuple[str, ...]
    group: str | None

    @property
    def admin(self) -> bool:
        return "admin" in self.scopes


OPEN = Caller(key_id=None, name="anonymous", scopes=SCOPES, group=None)


class KeyRing:
    """The active keys by hash, re-read from the store on `refresh` (revocations apply within a poll)."""

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace
        self._by_hash: dict[str, Caller] = {}
        self._lock = threading.Lock()
        self.refresh()

    def refresh(self) -> None:
        with session(self.workspace.engine) as s:
            keys = s.scalars(select(ApiKey).where(ApiKey.revoked_at.is_(None)))
            table = {k.key_hash: Caller(k.id, k.name, tuple(k.scopes), k.user_group) for k in keys}
        with self._lock:
            self._by_hash = table

    @property
    def open(self) -> bool:
        return not self._by_hash

    def authenticate(self, secret: str | None) -> Caller | None:
        """The caller of a bearer secret; None when it is missing or not an active key."""
        if self.open:
            return OPEN
        if not secret:
            return None
        with self._lock:
            return self._by_hash.get(hash_key(secret))

    def by_hash(self, key_hash: str) -> Caller | None:
        """The caller of an active key by its SHA-256 (a web session keeps the hash, not the key)."""
        with self._lock:
            return self._by_hash.get(key_hash)
