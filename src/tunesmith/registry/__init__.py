"""Registry: immutable model versions with their lineage."""

from tunesmith.registry.versions import (
    RegistryError,
    get_version,
    list_versions,
    register_trained,
    register_version,
)

__all__ = ["RegistryError", "get_version", "list_versions", "register_trained", "register_version"]
