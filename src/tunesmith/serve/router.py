"""Which version answers a request: model names to versions (following alias moves), and traffic policies.

`ModelTable` keeps every name a client has used (a version `support-v7`, an alias
`support@production`, or a bare family meaning its production alias) bound to a loaded version.
When an alias moves, the new version is loaded and warmed up first; only then does the name point
at it, and the old version is dropped once its in-flight requests are done. A version that fails
to load leaves the old one serving, and is not tried again until the alias moves again. With
`max_loaded`, loading one version more than that first unloads the least recently used name's
version (once its in-flight requests finish); pinned names (`serve.models`, the routes) stay.
A request holds its version from routing until its jobs are queued (`hold`, `release`), so a swap
in between defers the unload instead of pulling the version from under it.

`Router` applies a route's policy (`serve.routes`): targeting rules, a running rollout, canary
splits, then the primary; and picks a shadow to mirror the request to.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from sqlalchemy import func, select

from tunesmith.config import RouteConfig, ServeConfig
from tunesmith.registry.versions import alias_target
from tunesmith.serve.backends import Backend, BackendError
from tunesmith.serve.keys import Caller
from tunesmith.store import AliasEvent, ModelVersion, Rollout, session
from tunesmith.workspace import Workspace

log = logging.getLogger("tunesmith.serve")


class UnknownModelError(LookupError):
    """No registered version answers to the name; the message lists what does."""


class CapacityError(RuntimeError):
    """Every loaded version is pinned and `serve.max_loaded` allows no more."""


class ModelTable:
    def __init__(
        self,
        workspace: Workspace,
        backend: Backend,
        *,
        max_loaded: int | None = None,
        pinned: Iterable[str] = (),
    ) -> None:
        self.workspace = workspace
        self.backend = backend
        self.max_loaded = max_loaded
        self._pinned = set(pinned)
        self._refs: dict[str, ModelVersion] = {}
        self._used: dict[str, float] = {}  # name -> when a request last asked for it
        self._failed: dict[str, str] = {}  # name -> version id that failed to load for it
        self._canonical: dict[str, str] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()  # one eviction-and-load at a time keeps the count right
        self._holds: collections.Counter[str] = collections.Counter()  # version id -> requests holding it
        self._orphans: set[str] = set()  # versions no name points at, unloaded when the last hold ends
        self._last_event: int | None = self._latest_event()
        self.on_swap: Callable[[str, str, str], None] | None = None  # (name, version name, result)

    # --- names -----------------------------------------------------------------------------

    def canonical(self, name: str) -> str:
        """`family@alias` and version names as they are; a bare family is its production alias."""
        if "@" in name or name in self._refs:
            return name
        if name not in self._canonical:  # a name's kind never changes: versions are never renamed
            self._canonical[name] = name if self._version_named(name) is not None else f"{name}@production"
        return self._canonical[name]

    def names(self) -> dict[str, ModelVersion]:
        with self._lock:
            return dict(self._refs)

    def in_use(self) -> set[str]:
        with self._lock:
            return {v.id for v in self._refs.values()}

    def hold(self, version: ModelVersion) -> bool:
        """Keep `version` loaded until `release`: a request between routing and queueing its jobs.

        False when a swap or an eviction unloaded it since it was chosen: route the request again.
        """
        with self._lock:
            if not self._holds[version.id] and version.id not in {v.id for v in self._refs.values()}:
                return False
            self._holds[version.id] += 1
            return True

    def release(self, version: ModelVersion) -> None:
        """End a `hold`; a version swapped out meanwhile is unloaded once nothing holds it."""
        with self._lock:
            self._holds[version.id] -= 1
            if self._holds[version.id] > 0:
                return
            del self._holds[version.id]
            if version.id not in self._orphans:
                return
            self._orphans.discard(version.id)
            if version.id in {v.id for v in self._refs.values()}:
                return  # a name points at it again
        self.backend.retire(version.id)

    def _retire(self, version: ModelVersion) -> bool:
        """Unload a version no name points at any more, now or when its last `hold` ends; False when
        a name still points at it."""
        with self._lock:
            if version.id in {v.id for v in self._refs.values()}:
                return False
            if self._holds[version.id]:
                self._orphans.add(version.id)
                return True
        self.backend.retire(version.id)  # dropped once its in-flight requests finish
        return True

    def ensure(self, name: str) -> ModelVersion:
        """The loaded version `name` points at, loading (and warming up) on first use."""
        name = self.canonical(name)
        with self._lock:
            self._used[name] = time.monotonic()
            if name in self._refs:
                return self._refs[name]
            lock = self._locks.setdefault(name, threading.Lock())
        with lock:  # one load per name, however many requests arrive at once
            with self._lock:
                if name in self._refs:
                    return self._refs[name]
            version = self.lookup(name)
            with self._load_lock:
                if version.id not in self.in_use():
                    self._make_room()
                self.backend.load(version)
                with self._lock:
                    self._refs[name] = version
            log.info("serving %s as %s", version.name, name)
            return version

    def _make_room(self) -> None:
        """Unload least recently used versions until one more fits under `max_loaded`.

        Raises:
            CapacityError: every loaded version is pinned.
        """
        if self.max_loaded is None:
            return
        while len(self.in_use()) >= self.max_loaded:
            with self._lock:
                names = {self.canonical(n) for n in self._pinned}
                pinned = {v.id for n, v in self._refs.items() if n in names}
                idle = [n for n in self._refs if self._refs[n].id not in pinned]
                if not idle:
                    raise CapacityError(
                        f"serve.max_loaded is {self.max_loaded} and every loaded version is pinned by "
                        "serve.models or serve.routes; raise max_loaded or pin fewer"
                    )
                victim = min(idle, key=lambda n: self._used.get(n, 0.0))
                version = self._refs.pop(victim)
            if self._retire(version):
                log.info("unloaded %s (%s): least recently used, serve.max_loaded", version.name, victim)

    def lookup(self, name: str) -> ModelVersion:
        """The version a name points at in the registry now (nothing is loaded)."""
        if "@" in name:
            family, alias = name.split("@", 1)
            version = alias_target(self.workspace, family, alias)
            if version is None and not self._has_family(family):  # most often a misspelt name
                raise UnknownModelError(
                    f"the model `{family}` does not exist: no version or family has that name"
                    + self._known_hint()
                )
            if version is None:
                raise UnknownModelError(
                    f"the model `{name}` does not exist: alias {alias} of {family} is not set"
                    + self._known_hint()
                )
            return version
        version = self._version_named(name)
        if version is None:
            raise UnknownModelError(f"the model `{name}` does not exist" + self._known_hint())
        return version

    def _version_named(self, name: str) -> ModelVersion | None:
        with session(self.workspace.engine) as s:
            return s.scalars(select(ModelVersion).where(ModelVersion.name == name)).first()

    def _has_family(self, family: str) -> bool:
        with session(self.workspace.engine) as s:
            return (
                s.scalars(select(ModelVersion.id).where(ModelVersion.family == family).limit(1)).first()
                is not None
            )

    def _known_hint(self) -> str:
        with session(self.workspace.engine) as s:
            names = list(
                s.scalars(select(ModelVersion.name).order_by(ModelVersion.created_at.desc()).limit(5))
            )
        return f"; registered versions include {', '.join(names)}" if names else "; nothing is registered yet"

    # --- following the registry ------------------------------------------------------------

    def _latest_event(self) -> int | None:
        with session(self.workspace.engine) as s:
            return s.scalar(select(func.max(AliasEvent.id)))

    def refresh(self, *, force: bool = False) -> list[tuple[str, str, str]]:
        """Follow alias moves since the last call: (name, version name, `swapped` or `failed`) for each."""
        latest = self._latest_event()
        if latest == self._last_event and not force:
            return []
        self._last_event = latest
        changes = []
        for name, current in self.names().items():
            if "@" not in name:
                continue
            try:
                target = self.lookup(name)
            except UnknownModelError:
                log.warning("%s is no longer set; %s keeps serving it until it is", name, current.name)
                continue
            if target.id == current.id or self._failed.get(name) == target.id:
                continue
            changes.append(self._swap(name, current, target))
        return changes

    def _swap(self, name: str, old: ModelVersion, new: ModelVersion) -> tuple[str, str, str]:
        try:
            self.backend.load(new)  # loads and warms up; requests keep going to `old` meanwhile
        except Exception as exc:
            self._failed[name] = new.id
            log.error("could not load %s for %s (%s); %s keeps serving", new.name, name, exc, old.name)
            result = (name, new.name, "failed")
        else:
            with self._lock:
                self._refs[name] = new
                self._failed.pop(name, None)
            log.info("%s now serves %s (was %s)", name, new.name, old.name)
            self._retire(old)
            result = (name, new.name, "swapped")
        if self.on_swap is not None:
            self.on_swap(*result)
        return result


@dataclass(frozen=True)
class Decision:
    """Where a request goes: the version that answers, the policy that chose it, and a shadow."""

    version: ModelVersion
    route: str  # primary, canary, rule:NAME, rollout:STEP
    shadow: ModelVersion | None = None


def secondary_targets(route: RouteConfig) -> list[str]:
    """A route's canary, rule and shadow targets: the names it sends some traffic to beside its primary."""
    return [
        *(c.to for c in route.canary),
        *(r.to for r in route.rules),
        *([route.shadow] if route.shadow else []),
    ]


def configured_names(config: ServeConfig) -> list[str]:
    """Every name `serve.models` and `serve.routes` name: their primaries, canaries, rules and shadows."""
    names = [*config.models]
    for route in config.routes:
        names += [route.model, *secondary_targets(route)]
    return list(dict.fromkeys(names))


class Router:
    """Picks the version of each request. With `serve.models` set, only the configured names (and
    the routes') are served; any other name is refused as unknown, and nothing else is loaded for it."""

    def __init__(self, config: ServeConfig, table: ModelTable) -> None:
        self.routes = {route.model: route for route in config.routes}
        self.table = table
        self._served = configured_names(config) if config.models else None
        self._rollouts: dict[str, tuple[Rollout, ModelVersion]] = {}
        self._unset: set[str] = set()  # route targets seen as aliases not set yet
        self._lock = threading.Lock()

    def check_names(self, models: list[str]) -> None:
        """Look up, without loading anything, every name `preload` would load: the same errors, at once.

        Raises:
            UnknownModelError: a name in `models` or a route's primary that points at no version, or
                a route target that names a version that does not exist.
        """
        for name in [*models, *self.routes]:
            self.table.lookup(self.table.canonical(name))
        for route in self.routes.values():
            for target in secondary_targets(route):
                if "@" not in target:  # an alias not set yet is no error (see `_optional`)
                    self.table.lookup(self.table.canonical(target))

    def preload(self, models: list[str]) -> None:
        """Load every name the routes and `models` use, so the first requests do not wait. A canary,
        rule or shadow alias that is not set yet is no error: its share goes to the primary (and
        nothing is mirrored) until the registry sets it, which the server follows."""
        for name in [*models, *self.routes]:
            self.table.ensure(name)
        for route in self.routes.values():
            for target in secondary_targets(route):
                self._optional(target)

    def _optional(self, name: str) -> ModelVersion | None:
        """The loaded version of a route's secondary target, or None while `name` is an alias not set."""
        try:
            return self.table.ensure(name)
        except UnknownModelError:
            if "@" not in name:
                raise  # a version that does not exist is a mistake in the config
            with self._lock:
                first = name not in self._unset
                self._unset.add(name)
            if first:
                log.info("%s is not set yet: its traffic goes to the primary until it is", name)
            return None

    def refresh_rollouts(self) -> None:
        """Re-read the running rollouts; their versions are loaded before traffic reaches them."""
        with session(self.table.workspace.engine) as s:
            running = list(s.scalars(select(Rollout).where(Rollout.status == "running")))
        active = {}
        for rollout in running:
            with session(self.table.workspace.engine) as s:
                version = s.get(ModelVersion, rollout.version_id)
            if version is not None:
                active[rollout.route] = (rollout, self.table.ensure(version.name))
        with self._lock:
            self._rollouts = active

    def rollout(self, route: str) -> tuple[Rollout, ModelVersion] | None:
        with self._lock:
            return self._rollouts.get(route)

    def route_for(self, requested: str) -> RouteConfig | None:
        return self.routes.get(requested) or self.routes.get(self.table.canonical(requested))

    @property
    def restricted(self) -> bool:
        """Only the names of `serve.models` and the routes may be served."""
        return self._served is not None

    def check_served(self, requested: str) -> None:
        """Refuse a name outside `serve.models` (and the routes) when the server is restricted to them.

        Raises:
            UnknownModelError: the name is not one this server serves.
        """
        if self._served is None:
            return
        if requested in self._served or self.table.canonical(requested) in {
            self.table.canonical(n) for n in self._served
        }:
            return
        raise UnknownModelError(
            f"the model `{requested}` is not served here; this server serves {', '.join(self._served)} "
            "(serve.models and serve.routes)"
        )

    def decide(
        self, requested: str, caller: Caller, user: str | None, headers: Mapping[str, str]
    ) -> Decision:
        """The version that answers, held loaded until `release` (call it once the jobs are queued).

        Raises:
            BackendError: the name's version was swapped out under the request three times running.
        """
        for _ in range(3):
            decision = self._choose(requested, caller, user, headers)
            if self.table.hold(decision.version):
                return decision
        raise BackendError(f"`{requested}` kept moving to another version while the request was routed")

    def release(self, decision: Decision) -> None:
        self.table.release(decision.version)

    def _choose(
        self, requested: str, caller: Caller, user: str | None, headers: Mapping[str, str]
    ) -> Decision:
        self.check_served(requested)
        route = self.route_for(requested)
        if route is None:
            return Decision(self.table.ensure(requested), "primary")
        key = user if route.sticky == "user" else headers.get(route.sticky.lower())
        if route.sticky == "user" and not key:
            key = headers.get("x-session-id")
        bucket = _bucket(route.model, key)
        chosen: Decision | None = None
        for rule in route.rules:
            if _matches(rule.headers, headers) and (not rule.groups or caller.group in rule.groups):
                target = self._optional(rule.to)
                chosen = Decision(target, f"rule:{rule.name}") if target is not None else None
                break
        shadow_name: str | None = None
        running = self.rollout(route.model)
        if chosen is None and running is not None:
            chosen, shadow_name = self._rollout_step(*running, route, caller, bucket)
        if chosen is None:
            edge = 0.0
            for split in route.canary:
                edge += split.percent
                if bucket < edge:
                    target = self._optional(split.to)
                    chosen = Decision(target, "canary") if target is not None else None
                    break
        if chosen is None:
            chosen = Decision(self.table.ensure(route.model), "primary")
        if shadow_name is None and route.shadow and random.random() * 100 < route.shadow_percent:
            shadow_name = route.shadow
        shadow = self._optional(shadow_name) if shadow_name is not None else None
        if shadow is not None and shadow.id != chosen.version.id:
            chosen = Decision(chosen.version, chosen.route, shadow)
        return chosen

    def _rollout_step(
        self, rollout: Rollout, version: ModelVersion, route: RouteConfig, caller: Caller, bucket: float
    ) -> tuple[Decision | None, str | None]:
        reached = rollout.steps[: rollout.step + 1]
        if reached[-1] == "shadow":
            return None, version.name
        if "internal" in reached and caller.group in route.rollout.internal_groups:
            return Decision(version, "rollout:internal"), None
        percents = [s for s in reached if not isinstance(s, str)]
        if percents and bucket < percents[-1]:
            return Decision(version, f"rollout:{percents[-1]:g}%"), None
        return None, None


def _matches(expected: Mapping[str, str], headers: Mapping[str, str]) -> bool:
    return all(headers.get(k.lower()) == v for k, v in expected.items())


def _bucket(salt: str, key: str | None) -> float:
    """A caller's place in [0, 100): the same key always lands in the same place (sticky splits)."""
    if not key:
        return random.random() * 100
    digest = hashlib.sha256(f"{salt}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100
