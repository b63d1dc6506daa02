"""Sweeps and learning curves: real trials on CPU, every trial a run, the best one registered."""

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from shared_data import sst2_project
from tunesmith.cli import app
from tunesmith.config import ParamRange, load_config
from tunesmith.store import ModelVersion, Run, schema_head, session
from tunesmith.sweep.curve import fit_power_law, predict
from tunesmith.sweep.search import direction_of, grid_values, space_size, storage_url
from tunesmith.workspace import open_workspace

runner = CliRunner()


def test_spaces_grids_directions_and_storage():
    assert grid_values(ParamRange(low=1e-4, high=1e-2, log=True)) == [1e-4, 1e-3, 1e-2]
    assert grid_values(ParamRange(low=1, high=3, step=1)) == [1, 2, 3]
    assert grid_values(ParamRange(choices=["a", "b"])) == ["a", "b"]
    space = {
        "train.lr": ParamRange(low=1e-4, high=1e-2, log=True),
        "train.lora.r": ParamRange(choices=[8, 16]),
    }
    assert math.isinf(space_size(space, "tpe")) and space_size(space, "grid") == 6
    with pytest.raises(ValueError, match="low"):
        ParamRange(low=2, high=1)
    config = load_config(None, ["sweep.objective=rouge_l"])
    assert direction_of(config) == "maximize"
    assert direction_of(load_config(None, ["sweep.objective=eval_loss"])) == "minimize"
    url, _ = storage_url(config, None)  # beside the project's SQLite store, never inside it
    assert url.endswith("tunesmith-sweeps.db") and url != config.resolved_store_url


def test_a_power_law_is_fitted_and_extrapolated():
    rows = [50, 100, 200, 400]
    values = [0.9 - 2.0 * n**-0.5 for n in rows]  # a score that rises towards 0.9
    fit = fit_power_law(rows, values, "maximize")
    assert fit is not None and abs(fit["a"] - 0.9) < 0.01 and abs(fit["c"] - 0.5) < 0.05
    assert predict(fit, 800) > predict(fit, 400)


def minilm_sst2_project(tmp_path: Path) -> Path:
    train = {"objective": "classify", "method": "freeze", "freeze": {"train_top": 2}, "epochs": 1}
    train |= {"batch_size": 16, "max_length": 40, "activation_checkpointing": False, "save_strategy": "no"}
    return sst2_project(
        tmp_path,
        160,
        {"val": 0.2, "test": 0.25},
        model={"id": "minilm-l6"},
        train=train,
        sweep={"objective": "accuracy", "startup_trials": 1},
    )


@pytest.mark.slow
def test_sweep_on_sst2_records_every_trial_registers_the_best_and_plots(tmp_path):
    config_path = minilm_sst2_project(tmp_path)
    space = "sweep.space={train.lr: {low: 1.0e-4, high: 3.0e-3, log: true}, train.seed: {choices: [0, 1]}}"
    never_pruned = "sweep.startup_trials=2"  # both trials finish: the importance and parallel plots need two
    sets = ["--set", space, "--set", never_pruned]
    result = runner.invoke(
        app, ["sweep", "--config", str(config_path), "--trials", "2", *sets, "--strategy", "random"]
    )
    assert result.exit_code == 0, result.output
    assert "warning" in result.output and "sparsely" in result.output  # 2 trials for a continuous space
    config = load_config(config_path)
    workspace = open_workspace(config)
    with session(workspace.engine) as s:
        runs = s.query(Run).filter(Run.kind == "sweep").all()
        versions = s.query(ModelVersion).all()
    assert len(runs) == 2 and all(r.metrics["sweep_study"] == "sentiment-accuracy-maximize" for r in runs)
    assert not any(k.startswith("test_") for r in runs for k in r.metrics)  # chosen on validation only
    assert "Test (" not in result.output
    assert {r.status for r in runs} <= {"finished", "pruned"}
    (best,) = versions  # only the best trial becomes a version
    finished = [r for r in runs if r.status == "finished"]
    assert best.metrics["eval_accuracy"] == max(r.metrics["eval_accuracy"] for r in finished)
    assert "registered as sentiment-v1" in result.output

    shown = runner.invoke(app, ["sweep", "show", "--config", str(config_path)])
    assert shown.exit_code == 0, shown.output
    assert "maximize accuracy" in shown.output and best.run_id[:12] in shown.output
    plots = workspace.root / "sweeps" / "sentiment-accuracy-maximize"
    assert (plots / "optimization_history.png").stat().st_size > 10_000
    assert (plots / "parallel_coordinate.png").exists()

    # A second worker joins the same study and takes the one trial its raised budget leaves.
    more = runner.invoke(
        app, ["sweep", "--config", str(config_path), "--trials", "3", "--set", space, "--no-register"]
    )
    assert more.exit_code == 0, more.output
    from tunesmith.sweep import open_study

    assert len(open_study(config, create=False).trials) == 3


@pytest.mark.slow
def test_learning_curve_on_sst2_fits_a_power_law_and_predicts_doubling(tmp_path):
    config_path = minilm_sst2_project(tmp_path)
    result = runner.invoke(
        app,
        [
            "sweep",
            "--config",
            str(config_path),
            "--learning-curve",
            "--set",
            "sweep.learning_curve.fractions=[0.25, 0.5, 1.0]",
            "--set",
            "train.lr=1e-3",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "test accuracy" in result.output and "train rows" in result.output
    (folder,) = (open_workspace(load_config(config_path)).root / "sweeps").glob("curve-*")
    curve = json.loads((folder / "curve.json").read_text())
    assert [p["fraction"] for p in curve["points"]] == [0.25, 0.5, 1.0]
    rows = [p["rows"] for p in curve["points"]]
    assert rows == sorted(rows) and rows[-1] == curve["full_rows"]
    if curve["fit"] is not None:
        assert "doubling the data" in result.output and curve["doubling_gain"] is not None
    else:
        assert "did not fit" in result.output
    assert (folder / "learning_curve.png").stat().st_size > 10_000


def test_grid_sweep_on_a_generated_metric_and_a_loss_learning_curve(tmp_path, tiny_model_dir):
    """A generative objective is scored on the validation answers after each trial; the curve's loss
    is the answer loss on the test split."""
    from tunesmith.pipeline import write_demo_project
    from tunesmith.sweep import SweepError, learning_curve, open_study, run_sweep
    from tunesmith.sweep.search import register_best_trial

    config_path = write_demo_project(tmp_path)
    settings = [
        f"model.id={tiny_model_dir}",
        "train.method=lora",
        "train.save_strategy=no",
        "train.epochs=1",
        "eval.max_new_tokens=8",
        "sweep.strategy=grid",
        "sweep.objective=rouge_l",
        "sweep.trials=null",  # the grid decides: every combination once
        "sweep.space={train.lr: {choices: [1.0e-3, 5.0e-2]}}",
    ]
    result = run_sweep(config_path, settings, register_best=False)  # a worker that registers nothing
    trials = result.study.trials
    assert len(trials) == 2 and result.direction == "maximize" and result.version is None
    assert result.study.study_name == "fernwick-support-rouge_l-maximize"
    assert {t.params["train.lr"] for t in trials} == {1e-3, 5e-2}
    assert all("rouge_l" in t.user_attrs["scores"] for t in trials if t.value is not None)
    # the figure a trial is chosen by is the report's figure: one scoring path
    best = result.study.best_trial
    assert best.value == best.user_attrs["scores"]["rouge_l"]

    # another worker registers the best trial from the study's storage, once
    workspace = open_workspace(load_config(config_path, settings))
    study = open_study(load_config(config_path, settings), create=False)
    version = register_best_trial(study, workspace)
    assert version.run_id == best.user_attrs["run_id"] and version.metrics["sweep_trial"] == best.number
    assert register_best_trial(study, workspace).id == version.id

    # resuming the study for another direction is refused before any trial runs
    with pytest.raises(SweepError, match="direction maximize \\(this sweep: minimize\\)"):
        run_sweep(
            config_path,
            [*settings, "sweep.study=fernwick-support-rouge_l-maximize", "sweep.direction=minimize"],
        )

    config = load_config(
        config_path,
        [*settings, "sweep.objective=eval_loss", "sweep.learning_curve.fractions=[0.3, 0.6, 1.0]"],
    )
    curve = learning_curve(config, open_workspace(config))
    assert [p.fraction for p in curve.points] == [0.3, 0.6, 1.0] and curve.direction == "minimize"
    assert all(p.value > 0 for p in curve.points)
    assert (curve.folder / "learning_curve.png").exists()


def test_the_project_postgresql_store_holds_a_study_in_its_own_schema(tmp_path, postgres_server, monkeypatch):
    import optuna
    from sqlalchemy import create_engine, text

    from tunesmith.sweep import open_study

    url = postgres_server()
    monkeypatch.setenv("TUNESMITH_DB_URL", url)
    config = load_config(
        None, [f"workspace={tmp_path / 'ws'}", "sweep.space={train.lr: {low: 1.0e-4, high: 1.0e-2}}"]
    )
    open_workspace(config)  # the store's own tables and migrations
    study = open_study(config)
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=3)
    again = open_study(config, create=False)  # a second worker finds the same study
    assert len(again.trials) == 3 and again.best_value == min(t.value for t in study.trials)
    with create_engine(url).connect() as conn:
        assert conn.execute(text("select version_num from public.alembic_version")).scalar() == schema_head()
        assert conn.execute(text("select count(*) from tunesmith_sweeps.trials")).scalar() == 3
    assert optuna.__version__


def test_workers_that_open_a_fresh_study_at_once_all_open_it(tmp_path, postgres_server):
    """Sweep workers started together on an empty PostgreSQL store each open the one study: Optuna's
    creation of its own tables (and of alembic's table in the sweep schema) runs one at a time."""
    import os
    import subprocess
    import sys

    code = (
        "import sys; from tunesmith.config import load_config; from tunesmith.sweep import open_study; "
        "config = load_config(None, [f'workspace={sys.argv[1]}', "
        "'sweep.space={train.lr: {low: 1.0e-4, high: 1.0e-2}}']); open_study(config)"
    )
    env = {**os.environ, "TUNESMITH_DB_URL": postgres_server()}
    starts = [
        subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "ws")], env=env, stderr=subprocess.PIPE)
        for _ in range(4)
    ]
    errors = [p.communicate(timeout=120)[1].decode() for p in starts]
    assert all(p.returncode == 0 for p in starts), "\n".join(errors)


def test_two_workers_on_one_postgresql_share_the_budget_and_register_the_best_once(
    tmp_path, tiny_model_dir, postgres_server, monkeypatch
):
    """Two `tunesmith sweep` processes started at once on one PostgreSQL store (and the study in it)
    run the study's 4 trials between them, none twice, and the best is registered once, by the last."""
    import os
    import subprocess
    import sys

    from tunesmith.pipeline import write_demo_project
    from tunesmith.sweep import open_study

    config_path = write_demo_project(tmp_path)
    env = {**os.environ, "TUNESMITH_DB_URL": postgres_server()}
    command = [sys.executable, "-m", "tunesmith.cli", "sweep", "--config", str(config_path), "--trials", "4"]
    command += ["--strategy", "random", "--objective", "eval_loss"]
    for setting in [
        f"model.id={tiny_model_dir}",
        "train.save_strategy=no",
        "train.epochs=1",
        "train.forgetting.probe=false",
        "sweep.prune=false",
        "sweep.space={train.lr: {low: 1.0e-4, high: 5.0e-2, log: true}}",
    ]:
        command += ["--set", setting]
    workers = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(2)
    ]
    outputs = [w.communicate(timeout=600)[0].decode() for w in workers]
    assert all(w.returncode == 0 for w in workers), "\n".join(outputs)

    monkeypatch.setenv("TUNESMITH_DB_URL", env["TUNESMITH_DB_URL"])
    config = load_config(config_path, [f"model.id={tiny_model_dir}", "sweep.objective=eval_loss"])
    study = open_study(config, create=False)
    with session(open_workspace(config).engine) as s:
        runs = s.query(Run).filter(Run.kind == "sweep").all()
        versions = s.query(ModelVersion).all()
    counted = [t for t in study.trials if t.user_attrs.get("budget_slot")]
    assert len(counted) == 4 and all(t.state.name == "COMPLETE" for t in counted)
    assert len({t.user_attrs["run_id"] for t in counted}) == 4 and len(runs) == 4  # no trial twice
    (version,) = versions  # registered once
    assert version.run_id == study.best_trial.user_attrs["run_id"]
    assert sum(f"registered as {version.name}" in o for o in outputs) == 1, outputs
