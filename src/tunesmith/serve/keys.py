"""API keys: created once and shown once, stored only as SHA-256, revocable, with a scope and a group.

Scopes: `inference` (the OpenAI routes) and `admin` (alias moves, config reloads, rollouts). A key's
group (internal, beta...) is what targeting rules match on.

A server (and the web app) needs a key for every request. Revoking the last key does not open it:
with no active key every request gets 401, saying how to add one. Open access is only ever an
explicit choice at start-up (`serve.auth: none`, `ui.auth: none`), logged as a warning, and only on
a loopback address.
"""

from __future__ import annotations

import ipaddress
import secrets
import threading
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import or_, select

from tunesmith.registry.identity import hash_key
from tunesmith.registry.versions import RegistryError, who
from tunesmith.store import ApiKey, session
from tunesmith.store.schema import utcnow
from tunesmith.workspace import Workspace

SCOPES = ("inference", "admin")
KEY_PREFIX = "tsk-"
NO_KEY_HELP = (
    "create one with `tunesmith serve keys create NAME --admin` and send it as `Authorization: Bearer KEY`"
)
Auth = Literal["keys", "none"]


def create_key(
    workspace: Workspace,
    name: str,
    *,
    admin: bool = False,
    group: str | None = None,
    requests_per_minute: int | None = None,
    tokens_per_minute: int | None = None,
) -> tuple[ApiKey, str]:
    """A new key; returns its record and the secret, which is not stored and cannot be shown again.

    Its rate limits (None: the server's `serve.rate_limit`) apply on every server of the workspace.
    """
    limits = {"requests_per_minute": requests_per_minute, "tokens_per_minute": tokens_per_minute}
    for label, limit in limits.items():
        if limit is not None and limit <= 0:
            raise RegistryError(f"{label} must be a positive number, not {limit}")
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(
        id=f"key-{secrets.token_hex(4)}",
        name=name,
        key_hash=hash_key(secret),
        prefix=secret[:10],
        scopes=["inference", "admin"] if admin else ["inference"],
        user_group=group,
        requests_per_minute=requests_per_minute,
        tokens_per_minute=tokens_per_minute,
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
    """Who sent a request: the key's id and name (None when the server is open), scopes, group and
    the key's own rate limits (None: the server's)."""

    key_id: str | None
    name: str
    scopes: tuple[str, ...]
    group: str | None
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None

    @property
    def admin(self) -> bool:
        return "admin" in self.scopes


OPEN = Caller(key_id=None, name="anonymous", scopes=SCOPES, group=None)


class KeyRing:
    """The active keys by hash, re-read from the store on `refresh` (revocations apply within a poll).

    With `auth="none"` (an explicit start-up choice) every caller is let in; otherwise only the
    callers of active keys, and with no active key, nobody.
    """

    def __init__(self, workspace: Workspace, auth: Auth = "keys") -> None:
        self.workspace = workspace
        self.auth = auth
        self._by_hash: dict[str, Caller] = {}
        self._lock = threading.Lock()
        self.refresh()

    def refresh(self) -> None:
        with session(self.workspace.engine) as s:
            keys = s.scalars(select(ApiKey).where(ApiKey.revoked_at.is_(None)))
            table = {
                k.key_hash: Caller(
                    k.id, k.name, tuple(k.scopes), k.user_group, k.requests_per_minute, k.tokens_per_minute
                )
                for k in keys
            }
        with self._lock:
            self._by_hash = table

    @property
    def open(self) -> bool:
        """Anyone may call: only when the server was started with `auth: none`."""
        return self.auth == "none"

    @property
    def empty(self) -> bool:
        """No key is active (every request of a keyed server is refused)."""
        with self._lock:
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

    def refusal(self, secret: str | None) -> str:
        """Why a request without a valid key is refused, and what to do."""
        if self.empty:
            return f"this server has no active API key, so it answers no one; {NO_KEY_HELP}"
        if secret:
            return "Incorrect API key provided."
        return "Missing API key: send `Authorization: Bearer KEY`."

    def check_exposure(self, host: str, setting: str) -> None:
        """Refuse open access on an address other machines can reach.

        Raises:
            RegistryError: `auth: none` with a host that is not loopback.
        """
        if self.open and not is_loopback(host):
            raise RegistryError(
                f"{setting}: none lets anyone who can reach {host} call every route, admin included; "
                f"it is allowed on 127.0.0.1, ::1 or localhost only. Use keys ({NO_KEY_HELP})"
            )

    def startup_warning(self) -> str | None:
        """What to tell the operator at start: open access, or a keyed server nobody can call yet."""
        if self.open:
            return "auth is none: anyone who can reach this address may call every route, admin included"
        if self.empty:
            return f"no active API key: every request will get 401 until you {NO_KEY_HELP}"
        return None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bootstrap_key(workspace: Workspace, name: str = "bootstrap") -> str | None:
    """A first admin key when none is active (a fresh container); its secret, or None when keys exist."""
    if any(k.revoked_at is None for k in list_keys(workspace)):
        return None
    return create_key(workspace, name, admin=True)[1]
