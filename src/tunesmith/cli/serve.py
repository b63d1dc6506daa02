"""`tunesmith serve`: the OpenAI-compatible server, its API keys and rollouts."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from tunesmith.cli.common import (
    app,
    err,
    fail,
    load_project,
    new_table,
    out,
    print_table,
    project_version,
    project_workspace,
    reported,
)
from tunesmith.cli.options import ConfigOpt, SetOpt
from tunesmith.config import ConfigError

serve_app = typer.Typer(invoke_without_command=True)
keys_app = typer.Typer(
    help="API keys of the server: create (shown once), list, revoke.", no_args_is_help=True
)
rollout_app = typer.Typer(
    help="Move a version through a route's rollout plan, one gated step at a time.", no_args_is_help=True
)
app.add_typer(serve_app, name="serve", rich_help_panel="Lifecycle")
serve_app.add_typer(keys_app, name="keys")
serve_app.add_typer(rollout_app, name="rollout")


@serve_app.callback()
def serve(
    ctx: typer.Context,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on (default serve.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default serve.port).")] = None,
    model: Annotated[
        list[str] | None, typer.Option("--model", help="Load this version or alias at start (repeatable).")
    ] = None,
    backend: Annotated[str | None, typer.Option(help="transformers, llamacpp or vllm.")] = None,
    list_backends: Annotated[
        bool, typer.Option("--list-backends", help="List the serving backends.")
    ] = False,
    bootstrap_key: Annotated[
        bool,
        typer.Option(
            "--bootstrap-key",
            help="When no API key is active, create an admin key and print it once (a fresh container).",
        ),
    ] = False,
) -> None:
    """OpenAI-compatible server over the registry: models by version or alias, canary, shadow, hot swap."""
    if ctx.invoked_subcommand is not None:
        return
    from tunesmith.registry import RegistryError
    from tunesmith.serve import run_server
    from tunesmith.serve.backends import BackendError, backend_names

    if list_backends:
        for name in backend_names():
            out.print(name)
        return
    overrides = list(set_ or [])
    if model:
        overrides.append(f"serve.models=[{', '.join(model)}]")
    if backend:
        overrides.append(f"serve.backend={backend}")
    cfg = load_project(config, overrides)
    if bootstrap_key and cfg.serve.auth == "keys":
        from tunesmith.serve.keys import bootstrap_key as make_key
        from tunesmith.workspace import open_workspace

        secret = make_key(open_workspace(cfg))
        if secret is not None:
            err.print(
                "No API key was active; created the admin key 'bootstrap'. "
                "Store it now, it is not shown again:"
            )
            err.print(secret, highlight=False, soft_wrap=True)
    try:
        run_server(cfg, host=host, port=port)
    except ConfigError as exc:  # the runtime config file
        raise fail(str(exc), 2) from None
    except (RegistryError, BackendError, ValueError) as exc:
        raise fail(str(exc)) from None


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="Who or what the key is for.")],
    admin: Annotated[bool, typer.Option(help="Also allow alias moves, config reloads and rollouts.")] = False,
    group: Annotated[
        str | None, typer.Option(help="User group for targeting rules (internal, beta...).")
    ] = None,
    rpm: Annotated[
        int | None, typer.Option(min=1, help="Requests per minute (default: serve.rate_limit).")
    ] = None,
    tpm: Annotated[
        int | None,
        typer.Option(min=1, help="Tokens per minute, prompt plus max_tokens (default: serve.rate_limit)."),
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Create a key; the secret is printed once and only its SHA-256 is stored."""
    from tunesmith.serve.keys import create_key

    key, secret = create_key(
        project_workspace(config),
        name,
        admin=admin,
        group=group,
        requests_per_minute=rpm,
        tokens_per_minute=tpm,
    )
    err.print(
        f"{key.id} ({', '.join(key.scopes)}{', group ' + group if group else ''}{_limits(key)}); "
        "store it now, it is not shown again:"
    )
    out.print(secret, highlight=False)


@keys_app.command("list")
def keys_list(config: ConfigOpt = None) -> None:
    """Keys with their scopes, group and state (never the secret)."""
    from tunesmith.serve.keys import list_keys

    table = new_table("id", "name", "prefix", "scopes", "group", "limits", "created", "revoked")
    for key in list_keys(project_workspace(config)):
        table.add_row(
            key.id,
            key.name,
            key.prefix + "…",
            ", ".join(key.scopes),
            key.user_group or "",
            _limits(key).removeprefix(", ") or "server's",
            key.created_at.strftime("%Y-%m-%d %H:%M"),
            key.revoked_at.strftime("%Y-%m-%d %H:%M") if key.revoked_at else "",
        )
    print_table(table, "no API keys yet: `tunesmith serve keys create NAME --admin` makes the first")


def _limits(key: Any) -> str:
    """A key's own rate limits, as `, 60 rpm, 10000 tpm` (empty: the server's apply)."""
    parts = [f"{key.requests_per_minute} rpm"] if key.requests_per_minute else []
    parts += [f"{key.tokens_per_minute} tpm"] if key.tokens_per_minute else []
    return "".join(f", {p}" for p in parts)


@keys_app.command("revoke")
def keys_revoke(
    key: Annotated[str, typer.Argument(help="Key id or name.")],
    config: ConfigOpt = None,
) -> None:
    """Revoke a key; a running server refuses it from its next poll (serve.poll_seconds)."""
    from tunesmith.registry import RegistryError
    from tunesmith.serve.keys import revoke_key

    with reported(RegistryError):
        revoked = revoke_key(project_workspace(config), key)
    out.print(f"revoked {revoked.id} ({revoked.name})", highlight=False)


@rollout_app.command("start")
def rollout_start(
    version: Annotated[str, typer.Argument(help="The version to roll out.")],
    route: Annotated[str, typer.Option(help="The route (serve.routes[].model), e.g. support@production.")],
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Start a rollout; the server advances it while the step's gates hold and rolls it back when not."""
    from tunesmith.registry import RegistryError
    from tunesmith.serve.rollout import describe, start_rollout

    cfg, workspace, target = project_version(config, set_, version)
    with reported(RegistryError):
        row = start_rollout(workspace, cfg.serve, route, target)
    info = describe(row, {target.id: target.name})
    out.print(f"{info['id']}: {target.name} on {row.route}, step {info['step']}", highlight=False)


@rollout_app.command("status")
def rollout_status(config: ConfigOpt = None) -> None:
    """Rollouts, newest first: version, route, step, status, and the last event's reasons."""
    from tunesmith.registry.versions import version_names
    from tunesmith.serve.rollout import describe, list_rollouts

    workspace = project_workspace(config)
    names = version_names(workspace)
    table = new_table("id", "version", "route", "step", "status", "since", "last event")
    for row in list_rollouts(workspace):
        info = describe(row, names)
        last = info["history"][-1]
        table.add_row(
            info["id"],
            info["version"],
            info["route"],
            info["step"],
            info["status"],
            info["since"],
            f"{last['event']}: {'; '.join(last.get('reasons', []))}".rstrip(": "),
        )
    out.print(table)


@rollout_app.command("abort")
def rollout_abort(
    rollout: Annotated[str, typer.Argument(help="Rollout id, or the route it runs on.")],
    reason: Annotated[str, typer.Option(help="Why: recorded in its history.")] = "",
    config: ConfigOpt = None,
) -> None:
    """Stop a running rollout; traffic returns to the route's primary at the server's next poll."""
    from tunesmith.registry import RegistryError
    from tunesmith.serve.rollout import abort_rollout

    with reported(RegistryError):
        row = abort_rollout(project_workspace(config), rollout, reason)
    out.print(f"{row.id} aborted", highlight=False)
