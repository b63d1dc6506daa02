"""Training on several processes through Accelerate: DDP on this CPU (gloo), the example configs for
FSDP and DeepSpeed read as Accelerate reads them, a killed distributed run resumed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
from sqlalchemy import select

from conftest import train_killed_at_checkpoint
from tunesmith.config import load_config
from tunesmith.pipeline import write_demo_project
from tunesmith.registry import get_version
from tunesmith.store import Run, session
from tunesmith.train.run import TrainLaunchError, accelerate_distributed_type, launch_command, train
from tunesmith.workspace import open_workspace

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "accelerate"
CUDA = pytest.importorskip("torch").cuda.is_available()


def accelerate_reads(path: Path) -> tuple[object, dict[str, str]]:
    """The launch arguments `accelerate launch --config_file path` ends with, and the environment its
    launcher gives the workers (FSDP's or DeepSpeed's settings among it)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    parsed = launch_command_parser().parse_args(["--config_file", str(path), "--num_processes", "2", "w.py"])
    args, defaults, _ = _validate_launch_command(parsed)
    if args.use_deepspeed:  # as `accelerate launch` marks what the file set, before its DeepSpeed launcher
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
        return args, prepare_deepspeed_cmd_env(args)[1]
    return args, prepare_multi_gpu_env(args)


@pytest.mark.parametrize(
    ("name", "kind"), [("ddp", "MULTI_GPU"), ("fsdp", "FSDP"), ("zero2", "DEEPSPEED"), ("zero3", "DEEPSPEED")]
)
def test_each_example_accelerate_config_is_read_by_accelerate_as_documented(name, kind):
    path = EXAMPLES / f"{name}.yaml"
    assert accelerate_distributed_type(path) == kind
    args, env = accelerate_reads(path)
    if name == "fsdp":
        from accelerate.utils import FullyShardedDataParallelPlugin

        assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "2"
        with mock.patch.dict(os.environ, env):
            plugin = FullyShardedDataParallelPlugin()  # every value is one the plugin accepts
        assert plugin.fsdp_version == 2 and "FULL_STATE_DICT" in str(plugin.state_dict_type)
    elif kind == "DEEPSPEED":
        assert env["ACCELERATE_USE_DEEPSPEED"] == "true"
        assert env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == name[-1]
    else:
        assert args.multi_gpu and not args.use_fsdp and not args.use_deepspeed
    text = path.read_text()
    assert ("tunesmith train --num-processes" in text and "Needs CUDA" in text) or kind == "MULTI_GPU"


@pytest.mark.skipif(CUDA, reason="the refusal is for machines without CUDA")
def test_fsdp_on_a_cpu_is_refused_not_run_as_ddp_in_disguise():
    with pytest.raises(TrainLaunchError, match=r"FSDP shards the model over GPUs.*no CUDA device"):
        launch_command(2, "accelerate", EXAMPLES / "fsdp.yaml")
    ddp = EXAMPLES / "ddp.yaml"
    assert launch_command(2, "accelerate", ddp)[-2:] == ["--config_file", str(ddp)]


@pytest.mark.parametrize("name", ["zero2", "zero3"])
def test_deepspeed_needs_its_package_and_says_how_to_install_it(name, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "deepspeed" else real(n, *a))
    with pytest.raises(TrainLaunchError, match="needs the deepspeed package: pip install deepspeed"):
        launch_command(2, "accelerate", EXAMPLES / f"{name}.yaml")


def test_a_launch_that_cannot_run_stops_before_a_run_is_opened(tmp_path, tiny_model_dir):
    config_path = write_demo_project(tmp_path)
    command = [sys.executable, "-m", "tunesmith.cli", "train", str(config_path), "--num-processes", "2"]
    command += ["--set", f"model.id={tiny_model_dir}"]
    for extra, says in [
        (["--accelerate-config", str(tmp_path / "missing.yaml")], "no such file"),
        (["--launcher", "mpirun"], "use accelerate or torchrun"),
    ]:
        done = subprocess.run([*command, *extra], capture_output=True, text=True, check=False)
        assert done.returncode == 1 and says in done.stdout + done.stderr, done.stderr
    with session(open_workspace(load_config(config_path)).engine) as s:
        assert s.scalars(select(Run)).first() is None


def logged_losses(run_dir: Path) -> dict[int, float]:
    history = json.loads((run_dir / "log_history.json").read_text())
    return {h["step"]: h["loss"] for h in history if "loss" in h}


def test_accelerate_ddp_on_two_processes_matches_one_process_and_resumes_after_a_kill(
    tmp_path, tiny_model_dir
):
    """Two processes of batch 2 see the rows one process of batch 4 sees, step by step: the loss curve
    matches (float32: to 1e-3); killed after a checkpoint, `train --resume RUN --num-processes 2
    --launcher torchrun` finishes it: a run started by one launcher resumes under the other."""
    steps, every, tolerance = 60, 10, 1e-3
    settings = [f"model.id={tiny_model_dir}", f"train.max_steps={steps}", "train.logging_steps=1"]
    settings += ["data.split.val=0", "train.save_strategy=steps", f"train.save_steps={every}"]
    settings += ["train.forgetting.probe=false", "train.max_length=128"]
    reference = train(load_config(write_demo_project(tmp_path / "one"), [*settings, "train.batch_size=4"]))

    config_path = write_demo_project(tmp_path / "two")
    command = [sys.executable, "-m", "tunesmith.cli", "train", str(config_path), "--num-processes", "2"]
    for setting in [*settings, "train.batch_size=2"]:
        command += ["--set", setting]
    config = load_config(config_path)
    train_killed_at_checkpoint(command, tmp_path / "two", every)
    with session(open_workspace(config).engine) as s:
        killed = s.scalars(select(Run)).one()
    assert killed.status == "running"
    command = [*command[:5], "--resume", killed.id, "--num-processes", "2", "--launcher", "torchrun"]
    resumed = subprocess.run(command, capture_output=True, text=True, check=False)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "on 2 processes" in resumed.stdout
    version = get_version(open_workspace(config), "fernwick-support-v1")
    with session(open_workspace(config).engine) as s:
        run = s.scalars(select(Run)).one()  # one run: the resumed one, not a second
    assert version.run_id == run.id and version.metrics["world_size"] == 2
    assert version.metrics["distributed"] == "ddp" and reference.version.metrics["distributed"] == "single"
    assert version.metrics["global_step"] == steps
    expected, got = logged_losses(reference.run_dir), logged_losses(Path(run.path))
    assert max(got) == steps
    for step in got:  # the same rows per step; only the reduction order differs
        assert got[step] == pytest.approx(expected[step], rel=tolerance), step
    assert version.metrics["train_loss"] == pytest.approx(
        reference.version.metrics["train_loss"], rel=tolerance
    )


@pytest.mark.slow
@pytest.mark.parametrize(("stage", "objective"), [(2, "sft"), (3, "sft"), (3, "classify")])
def test_deepspeed_zero_trains_on_this_cpu_through_its_cpu_accelerator(
    tmp_path, tiny_model_dir, stage, objective
):
    """DeepSpeed's CPU accelerator shards over gloo: ZeRO-2 and ZeRO-3 train and register, the
    forgetting probe and a classifier's test scores included (a ZeRO-3 model forwards only with every
    process)."""
    pytest.importorskip("deepspeed", reason="DeepSpeed is not installed: make setup installs it")
    from test_train_classify import topic_rows, write_project

    if objective == "classify":
        config_path = write_project(tmp_path, tiny_model_dir, topic_rows(), "objective: classify")
        family = "topics"
    else:
        config_path, family = write_demo_project(tmp_path), "fernwick-support"
    command = [sys.executable, "-m", "tunesmith.cli", "train", str(config_path), "--num-processes", "2"]
    command += ["--accelerate-config", str(EXAMPLES / f"zero{stage}.yaml")]
    for setting in [
        f"model.id={tiny_model_dir}",
        "train.max_steps=6",
        "train.batch_size=2",
        "train.save_strategy=no",
    ]:
        command += ["--set", setting]
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    version = get_version(open_workspace(load_config(config_path)), f"{family}-v1")
    assert version.metrics["distributed"] == f"deepspeed-zero{stage}" and version.metrics["world_size"] == 2
    assert version.metrics["global_step"] == 6
    assert "forgetting" in version.metrics if objective == "sft" else "test_accuracy" in version.metrics
