"""`tunesmith train`: fine-tune, resume, dry-run, or launch on several processes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from tunesmith.cli.common import app, err, fail, load_project, new_table, out, reported
from tunesmith.cli.options import ConfigArg, SetOpt
from tunesmith.config import CONFIG_FILENAME, ProjectConfig

DryRunOpt = Annotated[
    bool, typer.Option("--dry-run", help="Check data, memory fit and time per epoch; train nothing.")
]
PlanOpt = Annotated[
    bool,
    typer.Option(
        "--plan", help="Print the objective and settings the run would train with, and why; train nothing."
    ),
]


@app.command("train", rich_help_panel="Lifecycle")
def train_cmd(
    config: ConfigArg = None,
    set_: SetOpt = None,
    resume: Annotated[
        str | None, typer.Option(help="Continue this stopped run from its last checkpoint.")
    ] = None,
    dry_run: DryRunOpt = False,
    plan: PlanOpt = False,
    num_processes: Annotated[
        int,
        typer.Option(
            "--num-processes",
            min=1,
            help="Processes (GPUs) to train with; >1 runs DDP (or FSDP/DeepSpeed: --accelerate-config).",
        ),
    ] = 1,
    launcher: Annotated[
        str, typer.Option(help="accelerate (multi-GPU, DeepSpeed, FSDP) or torchrun.")
    ] = "accelerate",
    accelerate_config: Annotated[
        Path | None, typer.Option(help="An Accelerate config file (DeepSpeed ZeRO, FSDP), passed through.")
    ] = None,
) -> None:
    """Fine-tune the base model on data.path and register the result as a new version."""
    from tunesmith.train.openmp import prepare_training_process

    if num_processes == 1:  # a launcher gives each of several processes its own thread settings
        prepare_training_process()  # first: before anything loads torch
    from tunesmith.data import DataError
    from tunesmith.models import ModelNotFoundError
    from tunesmith.registry import RegistryError
    from tunesmith.train import DiskFullError, TrainConfigError
    from tunesmith.train.fit import DoesNotFitError
    from tunesmith.train.methods import MethodError
    from tunesmith.train.run import resume_run, train

    cfg = load_project(config, set_)
    errors = (
        DataError,
        ModelNotFoundError,
        TrainConfigError,
        MethodError,
        RegistryError,
        DoesNotFitError,
        DiskFullError,
    )
    if plan:
        _plan(cfg, errors)
        return
    if dry_run:
        _dry_run(cfg, errors)
        return
    if num_processes > 1:
        from tunesmith.train.run import TrainLaunchError, launch_distributed

        with reported(*errors, TrainLaunchError):
            version = launch_distributed(
                cfg,
                config or Path(CONFIG_FILENAME),
                list(set_ or []),
                num_processes,
                launcher,
                accelerate_config,
                resume,
            )
        out.print(
            f"Registered [bold]{version.name}[/bold] from run {version.run_id} on {num_processes} "
            f"processes. Next: `tunesmith eval {version.name}`"
        )
        return
    with reported(*errors):
        outcome = resume_run(cfg, resume) if resume else train(cfg)
    _print_trained(outcome)
    if outcome.attempts:
        _print_attempts(outcome.attempts, cfg.train.forgetting.max_increase)


def _print_attempts(attempts: list[dict[str, Any]], bound: float) -> None:
    """The runs `train.forgetting.auto` tried; exit 3 when none held the forgetting probe."""
    table = new_table("attempt", "guard", "version", "general answer loss", "within the bound")
    for n, tried in enumerate(attempts, 1):
        rise = "no probe" if tried["rise"] is None else f"{tried['rise']:+.1%}"
        table.add_row(str(n), tried["guard"], tried["version"], rise, "yes" if tried["passed"] else "no")
    table.title = f"Forgetting guard: the general answer loss may rise by at most {bound:.0%}"
    out.print(table)
    if not attempts[-1]["passed"]:
        raise fail(
            f"no attempt kept the general answer loss within +{bound:.0%}: {attempts[-1]['version']} is "
            "the candidate but forgets; try train.forgetting.general_data closer to your use, or a "
            "smaller train.lora.r",
            code=3,
        )


def _print_trained(outcome: Any) -> None:
    """What a single-process run registered, and what to run next."""
    from tunesmith.train.objectives import get_objective

    m, trained = outcome.version.metrics, get_objective(outcome.version.config["train"]["objective"])
    out.print(
        f"Registered [bold]{outcome.version.name}[/bold] from run {outcome.run_id}: train loss "
        f"{m['train_loss']:.3f}"
        + (f", validation loss {m['eval_loss']:.3f}" if "eval_loss" in m else "")
        + f", {m['tokens_per_second']:.0f} tokens/s. Artifacts: {outcome.run_dir}"
    )
    from tunesmith.train.forgetting import forgetting_warning

    warning = forgetting_warning(m, outcome.version.config["train"]["forgetting"])
    if warning is not None and not outcome.attempts:  # train.forgetting.auto prints its own table
        err.print(f"[yellow]warning:[/yellow] {warning}", soft_wrap=True, highlight=False)
    if "best_step" in m:  # early stopping kept the best evaluation's weights
        planned = outcome.version.config["train"]["num_train_epochs"]
        stopped = (
            f"stopped early after {m['epochs']:g} of {planned:g} epochs; " if m.get("stopped_early") else ""
        )
        out.print(f"{stopped}kept the weights of step {m['best_step']}, the best validation score")
    out.print(
        f"Next: `tunesmith eval {outcome.version.name}` ("
        + ("majority class" if trained.labelled else "base")
        + " vs this version on the held-out split), "
        f"`tunesmith registry show {outcome.version.name}`"
    )


def _plan(cfg: ProjectConfig, errors: tuple[type[Exception], ...]) -> None:
    """`train --plan`: the objective and the recipe's settings for this data, each with where it
    came from, and the memory estimate; nothing loads but the tokenizer and the model's config."""
    from tunesmith.train.recipe import plan_rows, set_by_config
    from tunesmith.train.run import checked_dataset
    from tunesmith.workspace import open_workspace

    named = set_by_config(cfg.train)
    with reported(*errors):
        planned, dataset, estimate = checked_dataset(cfg, open_workspace(cfg), refuse=False, announce=False)
    train = planned.train
    table = new_table("setting", "value", "from")
    objective_from = train.chosen_by_recipe.get("objective") or (
        "your config" if "objective" in named else "default"
    )
    table.add_row("objective", train.objective, objective_from)
    if train.objective == "distill":  # on- or off-policy follows from the teacher: say which, and why
        from tunesmith.train.distill import planned_mode

        with reported(*errors):
            mode, why = planned_mode(planned, open_workspace(cfg))
        table.add_row("distill.mode", mode, why)
    for row in plan_rows(named, train):
        table.add_row(*row)
    table.title = f"Plan: {train.method} {train.objective} of {planned.model.id} on dataset {dataset.id}"
    out.print(table)
    peak, free = estimate.peak_bytes / 2**30, estimate.available_bytes / 2**30
    out.print(
        f"Estimated peak memory {peak:.2f} GiB of {free:.1f} GiB "
        f"({estimate.device}): {'it fits' if estimate.fits else 'it does not fit'}. Set any of these in "
        "tunesmith.yaml or with --set to override the recipe; `train --dry-run` measures the time."
    )


def _dry_run(cfg: ProjectConfig, errors: tuple[type[Exception], ...]) -> None:
    from tunesmith.train.run import dry_run

    with reported(*errors):
        cfg, dataset, estimate, timing = dry_run(cfg)
    out.print(f"Dry run: {cfg.train.method} {cfg.train.objective} of {cfg.model.id} on dataset {dataset.id}")
    table = new_table("memory", "estimate")
    for label, value in estimate.rows():
        table.add_row(label, value)
    out.print(table)
    if not estimate.fits:
        raise fail(estimate.refusal())
    if timing is not None:
        out.print(timing.describe())
    out.print("It fits. Run the same command without --dry-run to train.")
