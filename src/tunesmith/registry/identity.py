"""Who is acting, in a form the tool can check: the owner of an admin API key, else the OS user.

Free text (`--by`, $TUNESMITH_USER) names people in notes and history rows, but a decision that
governance rests on (an approval) needs an identity the caller cannot simply type. On a shared
store (PostgreSQL, reached by many people) that is an admin API key of the store; on a local
SQLite store, the login of the OS user running the command.
"""

from __future__ import annotations

import hashlib
import os

from sqlalchemy import select

from tunesmith.registry.versions import RegistryError, os_user
from tunesmith.store import ApiKey, session
from tunesmith.workspace import Workspace

API_KEY_ENV = "TUNESMITH_API_KEY"


def hash_key(secret: str) -> str:
    """The SHA-256 an API key is stored and looked up by (the secret itself is never stored)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def shared_store(workspace: Workspace) -> bool:
    """A database server many people reach, rather than a project's own SQLite file."""
    return workspace.engine.dialect.name != "sqlite"


def checked_identity(workspace: Workspace, api_key: str | None = None) -> str:
    """The identity of whoever runs this: the owner (name) of the admin key `api_key` (or
    $TUNESMITH_API_KEY), else, on a local store, the OS user.

    Raises:
        RegistryError: a key that is not an active admin key, or a shared store and no key.
    """
    secret = api_key or os.environ.get(API_KEY_ENV)
    if secret:
        with session(workspace.engine) as s:
            key = s.scalars(
                select(ApiKey).where(ApiKey.key_hash == hash_key(secret), ApiKey.revoked_at.is_(None))
            ).first()
        if key is None or "admin" not in key.scopes:
            raise RegistryError(
                "the API key is not an active admin key of this store; "
                "an admin creates one with `tunesmith serve keys create NAME --admin`"
            )
        return key.name
    if shared_store(workspace):
        raise RegistryError(
            f"this store is shared ({workspace.engine.dialect.name}): say who you are with your admin API "
            f"key (--api-key or ${API_KEY_ENV}); an admin creates one with "
            "`tunesmith serve keys create NAME --admin`"
        )
    return os_user()
