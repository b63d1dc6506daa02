"""Distillation (`objective: distill`): a student learns from a teacher model (`train.distill`).

On-policy, with TRL's DistillationTrainer (the GKD method): the student answers each train prompt
itself, and is pulled towards the teacher's token distributions over those answers by the
generalised Jensen-Shannon divergence (`beta`: 0 forward KL, 1 reverse KL). The student learns on
the answers it actually writes, so it does not drift on its own mistakes, but the teacher must give
distributions over the student's tokens: both must share a vocabulary, which is checked first.

Off-policy: the teacher answers each train prompt once (the replies are cached on disk, so a killed
run asks again only what was not answered), and the student learns those answers by SFT, the loss on
the answers. Any teacher works: an OpenAI-compatible endpoint, or a local model with another
tokenizer. `mode: auto` picks on-policy for a local teacher with the student's vocabulary, and
off-policy otherwise, and says why. Rows the teacher could not answer are left out, counted, and
written to `distill/rejected-<dataset>.jsonl` in the workspace with the reason.

The teacher is a registered version (name or id), or a model id or folder; the version's lineage
names it (`distill.teacher`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunesmith.config import DistillSettings, ProjectConfig, endpoint_api_key
from tunesmith.store import DatasetVersion, ModelVersion
from tunesmith.workspace import Workspace, open_workspace

if TYPE_CHECKING:
    from tunesmith.train.objectives import TrainerJob


@dataclass(frozen=True)
class TeacherRef:
    """What `train.distill.teacher` names: an endpoint's model, a registered version, or a model."""

    settings: DistillSettings
    version: ModelVersion | None  # a registered version

    @property
    def endpoint(self) -> str | None:
        return self.settings.teacher.endpoint

    @property
    def name(self) -> str:
        return self.version.name if self.version is not None else self.settings.teacher.model

    def lineage(self) -> dict[str, Any]:
        """How the version's lineage names the teacher."""
        teacher: dict[str, Any]
        if self.endpoint:
            teacher = {"endpoint": self.endpoint, "model": self.settings.teacher.model}
        elif self.version is not None:
            v = self.version
            teacher = {"version": v.name, "id": v.id, "weights_sha256": v.weights_sha256}
        else:
            teacher = {"model": self.settings.teacher.model}
        return {"teacher": teacher, "beta": self.settings.beta}


def teacher_ref(config: ProjectConfig, workspace: Workspace) -> TeacherRef:
    """The teacher `train.distill` names: a registered version when one has that name or id."""
    from tunesmith.registry.versions import RegistryError, get_version

    settings = config.train.distill
    assert settings is not None  # the config refuses objective distill without it
    if settings.teacher.endpoint:
        return TeacherRef(settings, None)
    try:
        return TeacherRef(settings, get_version(workspace, settings.teacher.model))
    except RegistryError:
        return TeacherRef(settings, None)


def _vocabulary(ref: TeacherRef) -> dict[str, int]:
    """The teacher's vocabulary (only its tokenizer is loaded).

    Raises:
        TrainConfigError: the teacher is neither a registered version nor a model that loads.
    """
    from tunesmith.models.catalog import ModelNotFoundError
    from tunesmith.models.loading import load_tokenizer
    from tunesmith.train.sft import TrainConfigError

    if ref.version is not None:
        model = ref.version.config["model"]
        return dict(load_tokenizer(model["id"], model["source"], model["revision"]).get_vocab())
    try:
        return dict(load_tokenizer(ref.settings.teacher.model).get_vocab())
    except ModelNotFoundError as exc:
        raise TrainConfigError(
            f"train.distill.teacher.model {ref.settings.teacher.model!r} is neither a registered version "
            f"nor a model that loads: {exc}"
        ) from None


def distill_mode(config: ProjectConfig, workspace: Workspace, student: Any) -> tuple[str, str]:
    """(on_policy | off_policy, why) for the configured teacher and the `student` tokenizer.

    Raises:
        TrainConfigError: mode on_policy with a teacher whose vocabulary differs from the student's.
    """
    from tunesmith.train.sft import TrainConfigError

    ref = teacher_ref(config, workspace)
    if ref.endpoint:
        return "off_policy", f"the teacher {ref.name} is an endpoint: it gives answers, not distributions"
    if ref.settings.mode == "off_policy":
        return "off_policy", "train.distill.mode is off_policy"
    teacher, own = _vocabulary(ref), dict(student.get_vocab())
    if teacher == own:
        return "on_policy", f"the teacher {ref.name} has the student's vocabulary ({len(own)} tokens)"
    differs = f"the teacher {ref.name}'s vocabulary ({len(teacher)} tokens) is not the student's ({len(own)})"
    if ref.settings.mode == "on_policy":
        raise TrainConfigError(
            f"train.distill.mode on_policy needs the teacher's token distributions over the student's "
            f"tokens, but {differs}; set train.distill.mode: off_policy to learn the teacher's written "
            "answers instead, or pick a teacher of the student's family"
        )
    return "off_policy", differs


def planned_mode(config: ProjectConfig, workspace: Workspace) -> tuple[str, str]:
    """`distill_mode` with the student's tokenizer loaded (its weights are not): what `train --plan`
    shows and what the data for the run is prepared for."""
    from tunesmith.models.loading import load_tokenizer

    model = config.model
    return distill_mode(config, workspace, load_tokenizer(model.id, model.source, model.revision))


def distill_records(config: ProjectConfig, dataset: DatasetVersion) -> dict[str, list[dict[str, Any]]]:
    """The SFT rows; off-policy, each train row's last answer is the teacher's instead."""
    from tunesmith.models.teacher import TeacherError
    from tunesmith.progress import console
    from tunesmith.train.sft import TrainConfigError, split_records, with_replay

    records = split_records(config, dataset)
    workspace = open_workspace(config)
    mode, why = planned_mode(config, workspace)
    console.print(f"Distilling {mode.replace('_', '-')}: {why}", highlight=False, markup=False)
    if mode == "on_policy":  # the config refuses a forgetting guard unless off_policy is certain
        return records
    try:
        kept, rejected = teacher_answers(config, workspace, records["train"])
    except TeacherError as exc:
        raise TrainConfigError(str(exc)) from None
    if rejected:
        path = workspace.root / "distill" / f"rejected-{dataset.name}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rejected), encoding="utf-8")
        console.print(
            f"The teacher did not answer {len(rejected)} of {len(records['train'])} prompts; they are left "
            f"out, with the reasons in {path}",
            highlight=False,
            markup=False,
        )
    if not kept:
        raise TrainConfigError(
            f"the teacher answered none of the {len(records['train'])} train prompts; the reasons are in "
            f"{workspace.root / 'distill'}"
        )
    return with_replay(config, {**records, "train": kept})  # general rows keep their own answers


def teacher_answers(
    config: ProjectConfig, workspace: Workspace, rows: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(rows with the teacher's answer as their last turn, rows it did not answer with the reason)."""
    from tunesmith.models.teacher import Request

    prompts, rejected = teacher_prompts(rows)
    requests = [
        Request(
            r["messages"][-2]["content"],
            context=tuple((m["role"], m["content"]) for m in r["messages"][:-2]),
        )
        for r in prompts
    ]
    replies = _teacher(config, workspace).generate(requests, label="Teacher answering")
    kept = []
    for row, reply in zip(prompts, replies, strict=True):
        if reply.startswith("\x00") or not reply.strip():
            rejected.append({**row, "reason": reply.lstrip("\x00") or "the teacher's answer was empty"})
        else:
            kept.append({**row, "messages": [*row["messages"][:-1], {"role": "assistant", "content": reply}]})
    return kept, rejected


TOOL_ROWS_LEFT_OUT = (
    "off-policy distillation asks the teacher plain conversations; this row offers tools or holds tool "
    "calls (train tool calls with sft or dpo)"
)


def teacher_prompts(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(rows the teacher is asked to answer, rows it cannot be asked, each with the reason).

    The teacher is asked a plain conversation whose last turn is the user's. A row with tools, tool
    calls or tool results is left out and said why: asked as plain text, the teacher would answer a
    tool's result as if the user had written it, and the student would learn that answer."""
    asked, rejected = [], []
    for row in rows:
        messages = row["messages"]
        if row.get("tools") or any(m.get("tool_calls") or m["role"] == "tool" for m in messages):
            rejected.append({**row, "reason": TOOL_ROWS_LEFT_OUT})
        elif len(messages) >= 2 and messages[-1]["role"] == "assistant" and messages[-2]["role"] == "user":
            asked.append(row)
        else:
            rejected.append({**row, "reason": "no user turn and answer at its end: nothing to ask"})
    return asked, rejected


def _teacher(config: ProjectConfig, workspace: Workspace) -> Any:
    """The off-policy teacher: the endpoint, or the local model loaded to generate."""
    from tunesmith.models.teacher import EndpointBackend, LocalBackend, Teacher

    ref = teacher_ref(config, workspace)
    settings = ref.settings.teacher
    cache = workspace.root / "distill" / "cache"
    if ref.endpoint:
        key = endpoint_api_key(ref.endpoint, settings.api_key_env)
        backend: Any = EndpointBackend(ref.endpoint, settings.model, key, field="train.distill.teacher")
        return Teacher(backend, settings, cache)
    return Teacher(LocalBackend(*load_teacher_model(ref, config, workspace)), settings, cache)


def load_teacher_model(ref: TeacherRef, config: ProjectConfig, workspace: Workspace) -> tuple[Any, Any, str]:
    """(model, tokenizer, identity) of a local teacher, as plain weights in the run's weights dtype."""
    from tunesmith.registry.loading import load_named_model

    return load_named_model(
        workspace, ref.version.id if ref.version else ref.name, config, config.weights_dtype
    )


def distill_trainer(job: TrainerJob) -> Any:
    """Off-policy: the SFT trainer on the teacher's answers. On-policy: TRL's DistillationTrainer on
    the train prompts, the teacher loaded beside the student."""
    from datasets import Dataset
    from trl import DistillationTrainer

    from tunesmith.train.rl import rl_rows
    from tunesmith.train.sft import lora_config, sft_trainer

    config, base = job.config, job.base
    mode, _ = distill_mode(config, job.workspace, base.tokenizer)
    if mode == "off_policy":
        return sft_trainer(job)
    teacher, _, _ = load_teacher_model(teacher_ref(config, job.workspace), config, job.workspace)
    rows = rl_rows(job.records["train"], base.tokenizer)
    val = rl_rows(job.records.get("val", []), base.tokenizer)
    base.tokenizer.padding_side = "left"  # the student generates: prompts pad on the left
    trainer = DistillationTrainer(
        model=base.model,
        teacher_model=teacher,
        args=distill_config(config, job.run_dir / "trainer", bool(val)),
        train_dataset=Dataset.from_list(rows),
        eval_dataset=Dataset.from_list(val) if val else None,
        processing_class=base.tokenizer,
        peft_config=lora_config(config.train) if config.train.method in ("lora", "qlora") else None,
        callbacks=job.callbacks,
    )
    setattr(trainer, "distill_mode", mode)  # noqa: B010 (read by describe_distill)
    return trainer


def distill_config(config: ProjectConfig, output_dir: Path, has_eval: bool) -> Any:
    """TRL's DistillationConfig from the project's train section and `train.distill`."""
    from trl import DistillationConfig

    from tunesmith.train.sft import trainer_kwargs

    settings = config.train.distill
    assert settings is not None
    kwargs = trainer_kwargs(config.train, output_dir, has_eval, DistillationConfig)
    kwargs.update(settings.model_dump(include={"beta", "max_completion_length", "temperature"}))
    kwargs["logging_steps"] = 1  # the divergence at every step
    kwargs.pop("activation_checkpointing_kwargs", None)  # TRL hands them to torch, which lacks every_n_layers
    kwargs.update(config.train.args)  # what the user set there wins
    return DistillationConfig(**kwargs)


def distill_lineage(config: ProjectConfig, workspace: Workspace) -> dict[str, Any]:
    """`distill: {teacher: {version, id, weights_sha256} | {model} | {endpoint, model}, beta}`."""
    return {"distill": teacher_ref(config, workspace).lineage()}


def describe_distill(config: ProjectConfig, trainer: Any) -> str:
    settings = config.train.distill
    assert settings is not None
    if getattr(trainer, "distill_mode", "off_policy") == "on_policy":
        how = f"on-policy, generalised JSD beta={settings.beta}"
    else:
        how = "off-policy, SFT on its answers"
    return f"{config.train.method} distillation from {settings.teacher.model} ({how})"


def finish_distill(run: Any, trainer: Any, run_dir: Path, weights_dir: Path) -> dict[str, Any]:
    """On-policy: the divergence to the teacher over the first and the last quarter of the steps."""
    from tunesmith.train.rl_audit import quarter_means

    first, last = quarter_means(trainer.state.log_history, "loss")
    if getattr(trainer, "distill_mode", "off_policy") != "on_policy" or first is None:
        return {"distill_on_policy": 0.0}
    return {"distill_on_policy": 1.0, "divergence_first_quarter": first, "divergence_last_quarter": last}
