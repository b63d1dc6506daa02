"""Sync a version out: push it to the Hugging Face Hub, or log it to an MLflow model registry.

Both export the version first (with its parity check) and send the exported folder with the model
card; neither changes the local registry. Offline, or without credentials, they stop with a
message that says what is missing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tunesmith.registry.export import export_version
from tunesmith.registry.lifecycle import flatten, model_card
from tunesmith.registry.versions import RegistryError
from tunesmith.store import ModelVersion
from tunesmith.workspace import Workspace


class SyncError(RegistryError):
    """A push or log that could not be made: no credentials, no connection, no client library."""


def _export_with_card(workspace: Workspace, version: ModelVersion, fmt: str | None) -> Path:
    chosen = fmt or ("adapter" if version.method in ("lora", "qlora") else "merged")
    folder, _ = export_version(workspace, version, chosen)  # type: ignore[arg-type]
    (folder / "README.md").write_text(model_card(workspace, version), encoding="utf-8")
    return folder


def push_to_hub(
    workspace: Workspace, version: ModelVersion, repo_id: str, *, private: bool = True, fmt: str | None = None
) -> str:
    """Upload the version (adapter for LoRA versions, else merged) with its card; return the commit URL.

    Raises:
        SyncError: without a token, offline, or when the Hub refuses the upload.
    """
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise SyncError("the Hugging Face Hub is off (HF_HUB_OFFLINE is set); unset it to push")
    token = os.environ.get("HF_TOKEN") or get_token()
    if token is None:
        raise SyncError("no Hugging Face token: set HF_TOKEN or run `hf auth login`")
    api = HfApi(token=token)
    folder = _export_with_card(workspace, version, fmt)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            commit_message=f"{version.name} ({version.id}) from tunesmith",
            ignore_patterns=["parity.json"],
        )
    except OfflineModeIsEnabled:
        raise SyncError("the Hugging Face Hub is off (HF_HUB_OFFLINE is set); unset it to push") from None
    except HfHubHTTPError as exc:
        raise SyncError(f"the Hugging Face Hub refused the upload to {repo_id}: {exc}") from None
    except Exception as exc:
        if not _no_connection(exc):
            raise
        raise SyncError(
            f"could not reach the Hugging Face Hub ({exc.__class__.__name__}); check the connection"
        ) from None
    return str(getattr(commit, "commit_url", commit))


def _no_connection(exc: BaseException) -> bool:
    """A connection failure, whichever HTTP client the hub library uses (requests, httpx and forks)."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    return isinstance(exc, OSError) or bool(names & {"TransportError", "NetworkError", "ConnectionError"})


def log_to_mlflow(
    workspace: Workspace, version: ModelVersion, tracking_uri: str | None = None, *, fmt: str | None = None
) -> dict[str, Any]:
    """Log the version as an MLflow run (params, metrics, the exported files, the card) and register it
    as a version of the MLflow model named after the family.

    Raises:
        SyncError: when mlflow is not installed or the tracking server cannot be reached.
    """
    try:
        import mlflow
    except ImportError:
        raise SyncError("logging to MLflow needs the mlflow package: pip install mlflow-skinny") from None
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise SyncError("no MLflow tracking server: pass --tracking-uri or set MLFLOW_TRACKING_URI")
    folder = _export_with_card(workspace, version, fmt)
    try:
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment(version.family)
        with mlflow.start_run(run_name=version.name) as run:
            mlflow.log_params({k: str(v)[:250] for k, v in flatten(version.config).items()})
            mlflow.log_metrics(
                {
                    k: float(v)
                    for k, v in version.metrics.items()
                    if isinstance(v, int | float) and not isinstance(v, bool)
                }
            )
            mlflow.set_tags({"tunesmith.version": version.name, "tunesmith.version_id": version.id})
            mlflow.log_artifacts(str(folder), artifact_path="model")
        # the files are logged as artifacts, not as an MLflow-flavoured model: register their folder
        client = mlflow.MlflowClient()
        if not client.search_registered_models(filter_string=f"name = '{version.family}'"):
            client.create_registered_model(version.family)
        registered = client.create_model_version(
            version.family,
            source=f"{run.info.artifact_uri}/model",
            run_id=run.info.run_id,
            tags={"tunesmith.version": version.name},
            description=f"{version.name} ({version.id}) from tunesmith",
        )
    except Exception as exc:  # mlflow raises its own and requests' errors
        raise SyncError(f"MLflow at {uri} did not take {version.name}: {exc}") from None
    return {"run_id": run.info.run_id, "model": version.family, "model_version": registered.version}
