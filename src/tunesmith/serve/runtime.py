"""Runtime config: per-model system prompts, default generation settings and stop sequences, outside the code.

A YAML file (`serve.runtime_config`) read at start, re-read when it changes and on
`POST /admin/reload`. A file that does not validate is rejected with its problems (file:line) and
the settings in force keep serving.

```yaml
models:
  "*":                      # every model
    max_tokens: 200
  support:                  # a family: every version and alias of it
    system_prompt: You answer questions about Fernwick Library.
    temperature: 0.3
  support@canary-test:      # the name a client asks for, or a version name: most specific wins
    stop: ["\\nUser:"]
```
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from tunesmith.config import ConfigError, load_section_file
from tunesmith.store import ModelVersion

log = logging.getLogger("tunesmith.serve")


class ModelSettings(BaseModel):
    """Settings for one model name; unset fields fall through to less specific entries."""

    model_config = ConfigDict(extra="forbid")

    system_prompt: str | None = None  # added when a chat request has no system message
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, gt=0)
    stop: list[str] | None = Field(None, max_length=8)


class RuntimeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: dict[str, ModelSettings] = Field(default_factory=dict)

    def for_request(self, requested: str, version: ModelVersion) -> ModelSettings:
        """Merged settings: the requested name, then the version name, then the family, then `*`."""
        merged: dict[str, object] = {}
        for key in ("*", version.family, version.name, requested):
            entry = self.models.get(key)
            if entry is not None:
                merged.update(entry.model_dump(exclude_none=True))
        return ModelSettings.model_validate(merged)


class RuntimeConfig:
    """The settings in force and the file they came from."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.settings = RuntimeSettings()
        self._stamp: tuple[int, int] | None = None
        self._lock = threading.Lock()
        self.reloads = 0
        self.failures = 0
        if path is not None:
            self.reload()  # a broken file at start is an error: nothing good is serving yet

    def reload(self) -> RuntimeSettings:
        """Read the file again. Raises `ConfigError` (and keeps the current settings) when it is invalid."""
        if self.path is None:
            return self.settings
        stamp = _stamp(self.path)
        try:
            settings = load_section_file(self.path, RuntimeSettings)
        except ConfigError:
            self._stamp = stamp
            self.failures += 1
            raise
        with self._lock:
            self.settings, self._stamp = settings, stamp
        self.reloads += 1
        log.info("runtime config loaded from %s (%d model entries)", self.path, len(settings.models))
        return settings

    def reload_if_changed(self) -> bool:
        """Reload when the file's modification time moved; a bad edit is logged and skipped."""
        if self.path is None:
            return False
        if _stamp(self.path) == self._stamp:
            return False
        try:
            self.reload()
        except ConfigError as exc:
            log.error("runtime config rejected, the previous settings keep serving:\n%s", exc)
            return False
        return True


def _stamp(path: Path) -> tuple[int, int] | None:
    """Modification time and size: what says the file was edited."""
    if not path.exists():
        return None
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size
