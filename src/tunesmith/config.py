"""The project config: one typed section per stage, loaded from YAML, validated before anything runs.

`load_config` reports every problem at once, each with its field path and, where the value came
from the file, the file and line it sits on.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

import yaml
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

CONFIG_FILENAME = "tunesmith.yaml"
# objectives whose versions are causal LMs
GENERATIVE_OBJECTIVES = ("sft", "pretrain", "multitask", "dpo", "rl", "distill")
# The losses `train.preference.loss_type` takes: TRL DPOTrainer's own (a list combines them, weighted
# by loss_weights), and three that run on their own TRL trainers.
DPO_LOSSES = (
    "sigmoid",
    "hinge",
    "ipo",
    "exo_pair",
    "nca_pair",
    "robust",
    "bco_pair",
    "sppo_hard",
    "aot",
    "aot_unpaired",
    "apo_zero",
    "apo_down",
    "discopop",
    "sft",
    "sigmoid_norm",
)
SEPARATE_PREFERENCE_LOSSES = ("kto", "orpo", "simpo")  # KTOTrainer, ORPOTrainer, CPOTrainer(simpo)
SectionT = TypeVar("SectionT", bound=BaseModel)
DB_URL_ENV = "TUNESMITH_DB_URL"


def _yaml_word(value: Any, word: str) -> Any:
    """YAML 1.1 reads a bare `no`/`off` as false; in a field whose value may be that word, it is the word."""
    return word if value is False else value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class SplitConfig(_Section):
    """How rows are divided into train, validation and test."""

    @property
    def groups(self) -> bool:
        """Whether `group_field` keeps rows together: the grouped strategy, or the field set explicitly."""
        return self.strategy == "grouped" or "group_field" in self.model_fields_set

    strategy: Literal["random", "stratified", "grouped"] = "random"  # stratified: by label
    val: float = Field(0.1, ge=0.0, lt=1.0)
    test: float = Field(0.1, ge=0.0, lt=1.0)
    seed: int = 0
    field: str = "split"  # rows that carry this field keep the split it names
    # with strategy grouped (or group_field set explicitly), rows sharing this field's value always
    # land in the same split; under random or stratified, a column that happens to be named `group`
    # changes nothing
    group_field: str = "group"
    folds: int = Field(0, ge=0)  # k >= 2 also assigns the train rows to k cross-validation folds
    # A val/test row with an exact or near twin in train: drop it (to rejected.jsonl), or move it to train.
    leakage: Literal["remove", "reassign", "off"] = "remove"
    # Rows tagged `origin: synthetic` (`tunesmith data synth` / `augment`): `train` keeps them out of
    # validation and test, so metrics are measured on real rows only; `any` splits them like the rest.
    synthetic: Literal["train", "any"] = "train"

    _leakage_off = field_validator("leakage", mode="before")(lambda v: _yaml_word(v, "off"))

    @model_validator(mode="after")
    def _leaves_some_train(self) -> SplitConfig:
        if self.val + self.test >= 1.0:
            raise ValueError(f"val + test must leave rows for training (got {self.val} + {self.test})")
        if self.folds == 1:
            raise ValueError("folds: use 0 (no cross-validation) or at least 2")
        return self


PiiType = Literal["EMAIL", "PHONE", "CREDIT_CARD", "IBAN", "IP_ADDRESS", "US_SSN"]
PII_TYPES: tuple[PiiType, ...] = ("EMAIL", "PHONE", "CREDIT_CARD", "IBAN", "IP_ADDRESS", "US_SSN")


class CleanConfig(_Section):
    """Cleaning steps, in the order they run; each reports what it changed or removed."""

    # Unicode NFC, Unix line ends, control characters, blank lines before and whitespace after the
    # text; never indentation, inner spaces, newlines, ZWJ or ZWNJ
    normalize: bool = True
    collapse_whitespace: bool = False  # opt-in: single spaces, one blank line at most; never in code blocks
    strip_html: bool = False
    pii: bool = True  # replace personal data with typed placeholders such as [EMAIL]
    pii_types: list[PiiType] = Field(default_factory=lambda: list(PII_TYPES))
    pii_keep: list[str] = Field(default_factory=list)  # exact strings never scrubbed (your own support email)
    min_tokens: int = Field(1, ge=0)  # in tokens of the model's tokenizer
    max_tokens: int | None = Field(None, gt=0)  # None: the model's context window
    dedup: bool = True  # exact duplicates: the same text (case and runs of whitespace aside) and label
    # rows with the same input but different labels or answers, written to conflicts.jsonl:
    # keep_first, drop_all, keep_all; auto: drop_all for classification and tagging, else keep_all
    conflicts: Literal["auto", "keep_first", "drop_all", "keep_all"] = "auto"
    near_dedup: bool = True  # MinHash LSH near duplicates
    near_threshold: float = Field(0.85, gt=0.0, le=1.0)  # estimated Jaccard similarity of word 3-grams


DataFormat = Literal[
    "auto",
    "chat",
    "sharegpt",
    "prompt_completion",
    "alpaca",
    "text_label",
    "preference",
    "ranking",
    "feedback",
    "text",
    "tagging",
]


class DataConfig(_Section):
    """Where the rows come from, and how they are read, cleaned and split."""

    # file, folder, glob, saved HF dataset folder, HF hub id, or a stored dataset version id (ds-…)
    path: str | None = None
    licence: str | None = None  # the data's licence, for the model card (e.g. cc-by-4.0)
    format: DataFormat = "auto"
    columns: dict[str, str] = Field(default_factory=dict)  # canonical field -> source column
    system_prompt: str | None = None  # added to chat rows that have no system message
    # reasoning traces of chat rows (`reasoning_content`, or a leading <think> block): train: learned
    # with the answer; mask: kept as context, no loss on them; drop: removed when the data is prepared
    reasoning: Literal["train", "mask", "drop"] = "train"
    labels: list[str] | None = None  # allowed labels (classification); others are rejected
    strict: bool = False  # any rejected row fails the preparation
    # keep a seeded random sample of this many clean rows (a quick run on part of a large set)
    sample: int | None = Field(None, gt=0)
    contamination: list[str] = Field(default_factory=list)  # eval/benchmark files no row may match
    clean: CleanConfig = Field(default_factory=CleanConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)


def endpoint_api_key(endpoint: str, api_key_env: str | None) -> str | None:
    """The key to send to an OpenAI-compatible `endpoint`: from the variable the config names for it
    only; with none named, OPENAI_API_KEY for api.openai.com and no key for any other host."""
    from urllib.parse import urlparse

    if api_key_env:
        return os.environ.get(api_key_env)
    if urlparse(endpoint).hostname == "api.openai.com":
        return os.environ.get("OPENAI_API_KEY")
    return None


class TeacherConfig(_Section):
    """The model that writes synthetic rows: an OpenAI-compatible endpoint, or a local model."""

    endpoint: str | None = None  # an OpenAI-compatible base URL (…/v1), `tunesmith serve` included
    model: str = "base"  # endpoint: its model name; local: `base`, a registered version or a model id
    # the environment variable holding the endpoint's key; unset: no key is sent (api.openai.com
    # itself reads OPENAI_API_KEY), so a key is never sent to a host it was not meant for
    api_key_env: str | None = None
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    max_tokens: int = Field(512, gt=0)  # per teacher reply
    concurrency: int = Field(4, gt=0)  # endpoint: requests in flight at once
    batch_size: int = Field(4, gt=0)  # local: prompts generated together
    seed: int = 0


class SynthConfig(_Section):
    """Synthetic rows from documents (`tunesmith data synth`) and paraphrases (`tunesmith data augment`)."""

    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    style: Literal["qa", "instruction"] = "qa"  # question/answer pairs, or instruction/response pairs
    # A prompt template file of your own, with {passage}, {title} and {n}; its hash is its version.
    prompt: str | None = None
    chunk_tokens: int = Field(320, ge=32)  # chunk size in tokens of the teacher-side tokenizer
    chunk_overlap: int = Field(32, ge=0)
    pairs_per_chunk: int = Field(3, gt=0)  # pairs asked for in each teacher reply
    samples_per_chunk: int = Field(1, gt=0)  # teacher replies per chunk (sampled: more variety)
    max_chunks: int | None = Field(None, gt=0)  # a seeded sample of this many chunks
    # length and format checks, in words
    min_question_words: int = Field(3, ge=1)
    max_question_words: int = Field(120, gt=0)
    min_answer_words: int = Field(2, ge=1)
    max_answer_words: int = Field(400, gt=0)
    # groundedness: the answer's MiniLM cosine similarity to the closest passage sentences
    min_grounding: float = Field(0.5, ge=-1.0, le=1.0)
    # names and numbers in an answer that its passage (and question) never mention are invented
    check_specifics: bool = True
    judge: bool = False  # also ask eval.judge whether each answer is supported by its passage
    min_judge_score: float = Field(3.5, ge=1.0, le=5.0)
    # dedup against existing data: dataset version ids or files that no synthetic row may repeat
    against: list[str] = Field(default_factory=list)
    near_threshold: float = Field(0.8, gt=0.0, le=1.0)  # MinHash Jaccard on word 3-grams
    # augmentation
    paraphrases: int = Field(2, gt=0)  # paraphrases asked for per row
    # a paraphrase must stay this close (MiniLM cosine) to its original, so meaning and label hold
    min_similarity: float = Field(0.7, ge=-1.0, le=1.0)


class ParamRange(_Section):
    """One searched setting: `choices`, or a range `low`..`high` (with `log` scale or a `step`)."""

    choices: list[Any] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None  # ints when low, high and step are whole numbers
    grid_points: int = Field(3, ge=2)  # how many values of a range the grid strategy tries

    @model_validator(mode="after")
    def _one_kind(self) -> ParamRange:
        if self.choices is not None:
            if not self.choices:
                raise ValueError("choices: give at least one value")
            return self
        if self.low is None or self.high is None:
            raise ValueError("give `choices: [...]`, or a range with `low` and `high`")
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log-scale range needs low > 0")
        return self


class LearningCurveSettings(_Section):
    """Train on growing shares of the train split, all scored on the same split, and fit a power law."""

    fractions: list[float] = Field(default_factory=lambda: [0.1, 0.25, 0.5, 1.0])
    seeds: int = Field(1, ge=1)  # runs per fraction, each on another seeded subset

    @field_validator("fractions")
    @classmethod
    def _shares(cls, value: list[float]) -> list[float]:
        if len(value) < 3 or any(not 0 < f <= 1 for f in value):
            raise ValueError("give at least three shares between 0 and 1, e.g. [0.1, 0.25, 0.5, 1.0]")
        return sorted(set(value))


class SweepConfig(_Section):
    """Hyperparameter search (`tunesmith sweep`): a space, a strategy, an objective and a budget."""

    strategy: Literal["tpe", "random", "grid"] = "tpe"
    # any metric the trials report on the validation split: eval_loss, or an eval metric
    # (rouge_l, key_fact, accuracy, macro_f1, ...); the test split is kept for the final comparison
    objective: str = "eval_loss"
    direction: Literal["auto", "minimize", "maximize"] = "auto"  # auto: minimise losses, maximise the rest
    # dotted config fields, e.g. {train.lr: {low: 1e-5, high: 1e-3, log: true}, train.lora.r:
    # {choices: [8, 16, 32]}}; empty: sensible ranges for the configured method
    space: dict[str, ParamRange] = Field(default_factory=dict)
    trials: int | None = Field(8, gt=0)  # budget: trials in the study, over every worker sharing it
    timeout_minutes: float | None = Field(None, gt=0)  # budget: wall time
    max_tokens: int | None = Field(None, gt=0)  # budget: training tokens over all trials
    prune: bool = True  # stop trials whose validation scores trail the median of earlier trials
    startup_trials: int = Field(3, ge=0)  # trials that are never pruned (and TPE's random start)
    study: str | None = None  # study name; default <project>-<objective>-<direction>
    storage: str | None = None  # optuna storage URL shared by workers; default the project's store
    seed: int = 0
    learning_curve: LearningCurveSettings = Field(default_factory=LearningCurveSettings)


class ModelConfig(_Section):
    """The base model: a catalogue id, a Hugging Face hub id, or a local folder."""

    id: str = "smollm2-135m-instruct"
    source: Literal["auto", "bundled", "hub"] = "auto"
    revision: str | None = None
    # auto: bfloat16 base weights under LoRA adapters (which train in float32, as does a classifier's
    # new head) where the hardware multiplies bfloat16 natively (recent x86 CPUs, CUDA GPUs);
    # float32 otherwise and for every method that updates the base weights themselves.
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    # transformers' attention implementation. auto: the library's default (sdpa), except that a
    # classifier (classify, tag) trained on a CPU with rows of at most 256 tokens uses eager, which
    # is faster there.
    attn_implementation: Literal["auto", "eager", "sdpa", "flash_attention_2", "flex_attention"] = "auto"
    # Run the Python code a hub repository ships with its model (custom architectures). It runs with
    # your rights: turn it on only for a repository you trust, pinned with `revision`.
    trust_remote_code: bool = False


class LoraSettings(_Section):
    """PEFT `LoraConfig` fields, under their PEFT names."""

    r: int = Field(16, gt=0)
    lora_alpha: int = Field(32, gt=0)
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: str | list[str] = "all-linear"
    use_rslora: bool = False
    use_dora: bool = False


class FreezeSettings(_Section):
    """What `method: freeze` leaves trainable (the embeddings are always frozen)."""

    layers: int | None = Field(
        None, ge=0
    )  # freeze the first N transformer blocks, train the rest and the head
    train_top: int | None = Field(None, ge=0)  # or: train only the top k blocks and the head

    @model_validator(mode="after")
    def _one_of(self) -> FreezeSettings:
        if (self.layers is None) == (self.train_top is None):
            raise ValueError(
                "set exactly one of layers (freeze the first N blocks) or train_top (train the top k)"
            )
        return self


class QuantizationSettings(_Section):
    """bitsandbytes quantization of the frozen base for `method: qlora` (CUDA only)."""

    bits: Literal[4, 8] = 4
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True


class ForgettingConfig(_Section):
    """Guards against catastrophic forgetting; the forgetting probe itself runs on every run."""

    method: Literal["none", "replay", "ewc", "l2sp"] = "none"
    # General instruction rows (chat JSONL); rows with "use": "probe" are held out for the probe.
    # None: the small general set shipped with tunesmith.
    general_data: str | None = None
    replay_fraction: float = Field(
        0.2, gt=0.0, le=1.0
    )  # replay: general rows added, as a share of train rows
    ewc_lambda: float = Field(50.0, gt=0.0)  # ewc: weight of the Fisher-weighted pull to the start weights
    fisher_samples: int = Field(16, gt=0)  # ewc: general rows used to estimate the diagonal Fisher
    l2sp_alpha: float = Field(0.01, gt=0.0)  # l2sp: weight of the plain pull to the start weights
    probe: bool = True  # report the loss change on held-out general rows vs the base model
    # auto: when the probe's general answer loss rises by more than `max_increase` (relative), train
    # again with the next guard (replay of general data, then replay and a third of the learning
    # rate), at most `max_attempts` more times; `tunesmith improve` does the same on its eval gates
    auto: bool = False
    max_increase: float = Field(0.05, ge=0)
    max_attempts: int = Field(2, ge=0, le=2)


class TaskConfig(_Section):
    """One task of a `multitask` run: its rows, its share of the mixture, and its instruction template."""

    name: str = Field(min_length=1)
    data: DataConfig | None = None  # rows prepared like the top-level `data` section
    dataset: str | None = None  # or an existing dataset version id (`tunesmith data list`)
    weight: float = Field(1.0, gt=0)  # share of the mixture (normalised over the tasks)
    start_weight: float | None = Field(None, ge=0)  # schedule linear: the share at the start of the run
    # Wraps each row's last user message; `{prompt}` stands for the message itself.
    template: str | None = None
    system_prompt: str | None = None  # replaces (or adds) the system message of this task's rows

    @model_validator(mode="after")
    def _one_source(self) -> TaskConfig:
        if (self.data is None) == (self.dataset is None):
            raise ValueError("set exactly one of data (a data section) or dataset (a dataset version id)")
        if self.template is not None and "{prompt}" not in self.template:
            raise ValueError("template must contain {prompt}, where the row's own message goes")
        return self


class PreferenceSettings(_Section):
    """Preference optimisation (`objective: dpo`): which loss, and how far it may pull from the reference."""

    # sigmoid (DPO), ipo, hinge, robust, ... (every DPOTrainer loss; a list combines them), or:
    # kto (thumbs-up/down rows, or pairs split into them), orpo and simpo (no reference model at all)
    loss_type: str | list[str] = "sigmoid"
    loss_weights: list[float] | None = None  # one weight per loss of a list
    beta: float = Field(0.1, gt=0)  # strength of the pull towards the reference (DPO/KTO), or ORPO's λ
    label_smoothing: float = Field(0.0, ge=0.0, lt=0.5)  # robust/cDPO: share of pairs taken as mislabelled
    simpo_gamma: float = Field(0.5, ge=0.0)  # simpo: the target reward margin
    desirable_weight: float = Field(1.0, gt=0)  # kto: weight of thumbs-up rows
    undesirable_weight: float = Field(1.0, gt=0)  # kto: weight of thumbs-down rows

    @field_validator("loss_type")
    @classmethod
    def _known_loss(cls, value: str | list[str]) -> str | list[str]:
        names = [value] if isinstance(value, str) else value
        if not names:
            raise ValueError("loss_type: name at least one loss")
        for name in names:
            if name not in DPO_LOSSES + SEPARATE_PREFERENCE_LOSSES:
                known = ", ".join(DPO_LOSSES + SEPARATE_PREFERENCE_LOSSES)
                raise ValueError(f"loss_type {name!r} is unknown; use one of {known}")
        separate = [n for n in names if n in SEPARATE_PREFERENCE_LOSSES]
        if separate and len(names) > 1:
            raise ValueError(f"loss_type {separate[0]} runs on its own trainer and cannot be combined")
        return value

    @model_validator(mode="after")
    def _weights_match(self) -> PreferenceSettings:
        if self.loss_weights is not None:
            count = 1 if isinstance(self.loss_type, str) else len(self.loss_type)
            if len(self.loss_weights) != count:
                raise ValueError(
                    f"loss_weights: give one weight per loss ({count}), not {len(self.loss_weights)}"
                )
        return self

    @property
    def trainer(self) -> str:
        """The TRL trainer the loss runs on: dpo, kto, orpo or simpo."""
        return (
            self.loss_type
            if isinstance(self.loss_type, str) and self.loss_type in SEPARATE_PREFERENCE_LOSSES
            else "dpo"
        )


Checker = Literal["numeric_match", "exact_match", "contains", "answer_format"]


class RewardSpec(_Section):
    """One reward of an RL run: a reward-model version, a Python function, or a built-in checker."""

    model: str | None = None  # a registered reward-model version (objective reward), by name or id
    # "package.module:function" or "path/to/file.py:function", called as TRL calls reward functions:
    # f(prompts, completions, **columns) -> list[float]
    function: str | None = None
    # numeric_match: the answer's last number equals the reference's (after "####" when present);
    # exact_match / contains: the reference text, normalised; answer_format: ends in a final-answer line
    checker: Checker | None = None
    weight: float = 1.0
    name: str | None = None  # shown in the logs; default: the model, function or checker name

    @model_validator(mode="after")
    def _one_source(self) -> RewardSpec:
        if sum(x is not None for x in (self.model, self.function, self.checker)) != 1:
            raise ValueError("set exactly one of model, function or checker")
        if self.function is not None and ":" not in self.function:
            raise ValueError(f"function {self.function!r}: write it as module:function or file.py:function")
        return self

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        source = self.model or self.checker or str(self.function).rsplit(":", 1)[-1]
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", source)


class RLSettings(_Section):
    """Online RL (`objective: rl`): sample answers, score them, and move towards the better ones."""

    algorithm: Literal["grpo", "rloo"] = "grpo"  # TRL's GRPOTrainer or RLOOTrainer
    rewards: list[RewardSpec] = Field(default_factory=list)
    num_generations: int = Field(4, ge=2)  # answers sampled per prompt (the group they are compared in)
    max_completion_length: int = Field(128, gt=0)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    beta: float = Field(0.04, ge=0)  # the KL leash to the reference model (0: none, and no reference kept)
    epsilon: float = Field(0.2, gt=0)  # the ratio clip of the surrogate objective
    # optimisation passes over each batch of samples; above 1 the policy moves away from the sampling
    # policy within a batch, and the clip starts to bite
    num_iterations: int = Field(1, ge=1)
    # grpo only: how token losses are aggregated. dapo (TRL's default): over the batch's tokens;
    # grpo: per answer, then averaged (favours short right answers and long wrong ones); dr_grpo:
    # over a constant (max_completion_length), without that length bias; bnpo: over the local batch
    loss_type: Literal["dapo", "grpo", "dr_grpo", "bnpo"] = "dapo"
    # grpo only. token: one probability ratio per token; sequence: one per answer, the mean of its
    # tokens' (GSPO), whose ratios are near 1, so epsilon defaults to 3e-4 and epsilon_high to 4e-4
    importance_sampling: Literal["token", "sequence"] = "token"
    # the upper clip (DAPO's clip-higher, e.g. 0.28): at least epsilon; null: epsilon
    epsilon_high: float | None = Field(None, gt=0)
    # rewards scaled by their std within each prompt's group, over the batch, or not at all (Dr. GRPO)
    scale_rewards: Literal["group", "batch", "none"] = "group"
    mask_truncated_completions: bool = False  # answers cut at max_completion_length carry no loss
    # the audit's judge of right answers, to find top-rewarded answers that are wrong (reward
    # hacking): auto: the first of numeric_match, exact_match, contains among the rewards; off: none
    audit_checker: Literal["auto", "off", "numeric_match", "exact_match", "contains"] = "auto"

    @model_validator(mode="after")
    def _knobs_fit(self) -> RLSettings:
        if self.algorithm == "rloo":
            grpo_only = {"loss_type", "importance_sampling", "scale_rewards"} & self.model_fields_set
            if grpo_only:
                raise ValueError(f"{', '.join(sorted(grpo_only))}: GRPO settings; RLOO has its own estimator")
        if self.importance_sampling == "sequence":
            if "epsilon" not in self.model_fields_set:
                self.epsilon = 3e-4  # GSPO's values: sequence ratios stay close to 1
            if "epsilon_high" not in self.model_fields_set:
                self.epsilon_high = 4e-4
        if self.epsilon_high is not None and self.epsilon_high < self.epsilon:
            raise ValueError(
                f"epsilon_high {self.epsilon_high} is below epsilon {self.epsilon}: the clip's upper side"
            )
        return self


class DistillSettings(_Section):
    """Distillation (`objective: distill`): the student learns from a teacher model.

    on_policy: the student answers the train prompts and is pulled towards the teacher's token
    distributions over its own answers (TRL's DistillationTrainer, the GKD method); teacher and
    student must share a tokenizer. off_policy: the teacher answers each train prompt once (cached)
    and the student learns those answers by SFT; any teacher, an OpenAI-compatible endpoint included.
    auto: on_policy for a local teacher with the student's tokenizer, off_policy otherwise.
    """

    # teacher.model: a registered version (name or id), or a model id or folder; with teacher.endpoint,
    # the endpoint's model name. Sampling (temperature, top_p, max_tokens) is for off-policy answers.
    teacher: TeacherConfig = Field(default_factory=lambda: TeacherConfig(model=""))
    mode: Literal["auto", "on_policy", "off_policy"] = "auto"
    # on-policy: the generalised Jensen-Shannon divergence's interpolation, 0 forward KL (the
    # student covers the teacher), 1 reverse KL (it seeks the teacher's modes), 0.5 symmetric JSD
    beta: float = Field(0.5, ge=0.0, le=1.0)
    max_completion_length: int = Field(128, gt=0)  # on-policy: tokens the student answers per prompt
    temperature: float = Field(1.0, gt=0)  # on-policy: the student's sampling, and the loss's softening

    @model_validator(mode="after")
    def _teacher_named(self) -> DistillSettings:
        if not self.teacher.model:
            raise ValueError(
                "teacher.model: name the teacher (a registered version, a model id or folder, or the "
                "model of teacher.endpoint)"
            )
        if self.teacher.endpoint and self.mode == "on_policy":
            raise ValueError(
                "mode on_policy needs the teacher's token distributions, which an endpoint does not "
                "give; use mode off_policy (or auto), or a local teacher"
            )
        return self


class TrainConfig(_Section):
    """Training settings; the common ones under their TRL `SFTConfig` names, the rest in `args`."""

    # sft: chat/instruction rows, loss on the answers; pretrain: raw text (continued pre-training);
    # classify: a label per text (sequence-classification head); tag: a label per word (NER);
    # multitask: several instruction datasets (train.tasks) mixed by weight, optionally on a schedule;
    # reward: a reward model from preference pairs or rankings; dpo: preference optimisation of the
    # LM (train.preference); rl: online RL against rewards (train.rl); distill: learn from a teacher
    # model (train.distill)
    # auto: chosen from the data's row format when a run starts (printed with the reason): chat and
    # instruction rows sft, raw text pretrain, text+label classify, tagged tokens tag, chosen/rejected
    # pairs dpo, ranked responses reward, thumbs-up/down rows dpo with KTO; with train.tasks, multitask
    objective: Literal[
        "auto", "sft", "pretrain", "classify", "tag", "multitask", "reward", "dpo", "rl", "distill"
    ] = "auto"
    # auto: each of max_length, batch size, epochs, learning rate, LoRA rank, warm-up and early
    # stopping that this file leaves unset is sized to the dataset version when a run starts, and
    # printed with the reason (`train --plan` prints the plan and stops); off: the defaults below
    recipe: Literal["auto", "off"] = "auto"
    # auto: a classifier trained within time_budget_minutes on the default model and method, when the
    # model cannot see its train rows once in the budget, trains the bundled MiniLM encoder instead
    # if it sees more of them (both timed; printed with the measurements); off: always model.id
    encoder: Literal["auto", "off"] = "auto"
    # what the recipe chose, setting -> reason: filled in by the run, recorded with the version
    chosen_by_recipe: dict[str, str] = Field(default_factory=dict)
    # full: every weight; freeze: the top blocks and the head; head: the output head alone;
    # lora: low-rank adapters; qlora: adapters on a 4/8-bit base (CUDA).
    method: Literal["lora", "qlora", "full", "freeze", "head"] = "lora"
    # a registered version (name or id) to start from instead of the bare base model: an incremental
    # fine-tune, recorded as that version's child
    init_from: str | None = None
    num_train_epochs: float = Field(3.0, gt=0, validation_alias=AliasChoices("num_train_epochs", "epochs"))
    max_steps: int = -1  # > 0 overrides the epochs
    # minutes the run may train for (its timing steps and evaluations included): a few steps are
    # timed when it starts, and max_steps is capped to what fits, which trains on a share of the
    # rows when the data is larger than the budget allows (printed, and recorded as the recipe's)
    time_budget_minutes: float | None = Field(None, gt=0)
    learning_rate: float = Field(2e-4, gt=0, validation_alias=AliasChoices("learning_rate", "lr"))
    per_device_train_batch_size: int = Field(
        8, gt=0, validation_alias=AliasChoices("per_device_train_batch_size", "batch_size")
    )
    gradient_accumulation_steps: int = Field(1, gt=0)
    effective_batch_size: int | None = Field(None, gt=0)  # sets the accumulation to reach it
    max_length: int = Field(512, gt=0)
    lr_scheduler_type: Literal["linear", "cosine", "constant", "constant_with_warmup", "polynomial"] = (
        "linear"
    )
    warmup_steps: float = Field(0.0, ge=0)  # a fraction of all steps when below 1
    weight_decay: float = Field(0.0, ge=0)
    logging_steps: int = Field(5, gt=0)
    seed: int = 0
    # Recomputes activations in the backward pass instead of keeping them: far less memory, at the
    # cost of a second forward pass through the checkpointed blocks (about a fifth of a LoRA step).
    # auto: off when the run's estimated peak without it (its longest rows, up to max_length) takes
    # at most half of the memory free on the device, on otherwise (`tunesmith.train.fit`).
    activation_checkpointing: bool | Literal["auto"] = Field(
        "auto", validation_alias=AliasChoices("activation_checkpointing", "gradient_checkpointing")
    )
    # Checkpoint every n-th block only (the others keep their activations): 1 saves the most memory,
    # 2 gives back about half of the recomputation for a little more memory.
    checkpoint_every_n_layers: int = Field(2, ge=1)
    # Batches rows of similar length (shuffled in groups), so little of each batch is padding.
    group_by_length: bool = True
    # Packs rows into full max_length sequences without padding (best-fit decreasing; a row never
    # attends to another). Fastest with FlashAttention on a GPU; on a CPU group_by_length is faster.
    packing: bool = False
    save_strategy: Literal["no", "steps", "epoch"] = "epoch"  # checkpoints, for --resume
    save_steps: int = Field(100, gt=0)
    save_total_limit: int = Field(2, gt=0)  # checkpoints kept (the best one is always among them)
    early_stopping_patience: int | None = Field(None, gt=0)  # evaluations without improvement before stopping
    metric_for_best_model: str = "eval_loss"
    report_to: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(default_factory=list)
    lora: LoraSettings = Field(default_factory=LoraSettings)
    freeze: FreezeSettings | None = None
    quantization: QuantizationSettings = Field(default_factory=QuantizationSettings)
    forgetting: ForgettingConfig = Field(default_factory=ForgettingConfig)
    tasks: list[TaskConfig] = Field(default_factory=list)  # multitask: the tasks to mix
    # multitask: constant keeps each task's weight; linear moves it from start_weight to weight over the run
    schedule: Literal["constant", "linear"] = "constant"
    mixture_rows: int | None = Field(None, gt=0)  # multitask: rows per epoch (default: all train rows)
    preference: PreferenceSettings = Field(default_factory=PreferenceSettings)  # objective dpo
    rl: RLSettings = Field(default_factory=RLSettings)  # objective rl
    distill: DistillSettings | None = None  # objective distill
    args: dict[str, Any] = Field(default_factory=dict)  # any other `SFTConfig` field, passed as is

    _save_strategy_no = field_validator("save_strategy", mode="before")(lambda v: _yaml_word(v, "no"))
    _recipe_off = field_validator("recipe", "encoder", mode="before")(lambda v: _yaml_word(v, "off"))

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.objective == "auto" and self.tasks:  # several datasets mixed: nothing else trains them
            self.objective = "multitask"
        if self.method == "freeze" and self.freeze is None:
            raise ValueError("method freeze needs train.freeze.layers or train.freeze.train_top")
        if self.packing and self.objective in ("classify", "tag"):
            raise ValueError(f"packing joins rows of text; objective {self.objective} scores each row alone")
        if self.packing and self.objective == "multitask" and self.schedule == "linear":
            raise ValueError(
                "packing reorders rows, which would undo the linear schedule; use group_by_length"
            )
        if self.objective in ("classify", "tag") and self.forgetting.method != "none":
            raise ValueError(
                f"forgetting.method {self.forgetting.method} guards generation (sft, pretrain); "
                f"objective {self.objective} trains a new head, so set forgetting.method: none"
            )
        if self.objective == "multitask":
            if not self.tasks:
                raise ValueError(
                    "objective multitask needs train.tasks: a list of {name, data or dataset, weight}"
                )
            names = [t.name for t in self.tasks]
            if len(set(names)) != len(names):
                raise ValueError(f"train.tasks: task names must differ, got {names}")
            if self.forgetting.method == "replay":
                raise ValueError("forgetting.method replay: with multitask, add the general data as a task")
            if self.schedule == "linear" and all(t.start_weight is None for t in self.tasks):
                raise ValueError("schedule linear needs a start_weight on at least one task")
        elif self.tasks:
            raise ValueError(f"train.tasks is for objective multitask; objective is {self.objective}")
        self._check_preference_objectives()
        if self.early_stopping_patience is not None and self.save_strategy == "no":
            raise ValueError("early_stopping_patience needs checkpoints: set save_strategy to steps or epoch")
        return self

    def _check_preference_objectives(self) -> None:
        if self.objective == "rl" and not self.rl.rewards:
            raise ValueError(
                "objective rl needs train.rl.rewards: a list of {model | function | checker, weight}"
            )
        if self.objective == "distill" and self.distill is None:
            raise ValueError("objective distill needs train.distill.teacher.model: the model to learn from")
        if self.packing and self.objective in ("reward", "dpo", "rl"):
            raise ValueError(f"packing joins rows of text; objective {self.objective} scores whole answers")
        if self.objective == "reward" and self.forgetting.method != "none":
            raise ValueError("objective reward trains a scoring head: set forgetting.method: none")
        distill = self.distill
        off_policy = distill is not None and (distill.mode == "off_policy" or bool(distill.teacher.endpoint))
        if self.objective == "distill" and self.forgetting.method != "none" and not off_policy:
            raise ValueError(
                f"forgetting.method {self.forgetting.method} guards SFT runs: with objective distill, set "
                "train.distill.mode: off_policy (SFT on the teacher's answers), or forgetting.method: none"
            )
        if self.objective in ("dpo", "rl") and self.forgetting.method != "none":
            raise ValueError(
                f"forgetting.method {self.forgetting.method} guards SFT runs; objective {self.objective} "
                f"already pulls towards its reference (train.preference.beta / train.rl.beta)"
            )

    @property
    def processes(self) -> int:
        """How many processes train together: WORLD_SIZE in a distributed launch, else 1."""
        return max(1, int(os.environ.get("WORLD_SIZE", "1") or 1))

    @property
    def accumulation_steps(self) -> int:
        """Gradient accumulation: explicit, or enough to reach `effective_batch_size` with every
        process's batch counted (one optimizer step sees batch x processes x accumulation rows)."""
        if self.effective_batch_size is None:
            return self.gradient_accumulation_steps
        per_step = self.per_device_train_batch_size * self.processes
        return max(1, -(-self.effective_batch_size // per_step))


class ProbeConfig(_Section):
    """The forgetting probe: general-knowledge multiple choice and general text, base vs candidate."""

    enabled: bool = False  # `tunesmith eval --probe` turns it on for one run
    questions: str | None = None  # JSONL or CSV of {question, choices, answer}; default: the bundled set
    text: str | None = None  # JSONL of {text} or chat rows; default: the bundled general conversations
    scoring: Literal["choice", "letter"] = "choice"  # choice: each answer's text; letter: MMLU's A-D
    limit: int | None = Field(None, gt=0)  # a seeded sample of this many questions


class JudgeConfig(_Section):
    """An LLM judge: G-Eval scores 1-5 and pairwise preference, calibrated against human labels."""

    enabled: bool = False  # `tunesmith eval --judge` turns it on for one run
    endpoint: str | None = None  # an OpenAI-compatible base URL (…/v1); unset: a local model
    model: str = "base"  # endpoint: its model name; local: `base` or a registered version
    api_key_env: str | None = None  # the variable holding the endpoint's key (as synth.teacher.api_key_env)
    criteria: str = (
        "Helpfulness and correctness: the response answers the request accurately and completely, "
        "agrees with the reference answer when one is given, and invents no facts."
    )
    steps: list[str] = Field(default_factory=list)  # evaluation steps; empty: the judge writes them
    use_reference: bool = True  # show the judge the reference answer
    pairwise: bool = True  # also ask A-vs-B (both orders) between the version and each other system
    calibration: str | None = None  # human-labelled {prompt, answer, score 1-5} rows (JSONL or CSV)
    # judge scores may gate only when the 95% interval of Spearman's rho with the humans lies at or
    # above min_agreement, on at least min_calibration_rows rows the judge scored
    min_agreement: float = Field(0.5, ge=-1, le=1)
    min_calibration_rows: int = Field(30, ge=5)
    max_items: int | None = Field(None, gt=0)  # judge only the first N items


class GateConfig(_Section):
    """One promotion gate. Which fields are set decides its kind:

    - `metric` with `min` and/or `max`: an absolute threshold on the candidate: on the eval's score,
      or on a metric the version's records hold (`registry parity`'s parity_*, a reward model's
      accuracy) when the eval does not compute it;
    - `metric` with `min_improvement` (and `over`, `significant`): better than production (or the
      system named in `over`) by at least that much, significantly unless `significant: false`;
    - `max_forgetting` with `metric` `probe_accuracy` or `general_perplexity`: the most the
      forgetting probe may get worse than the base;
    - `metric` with `slice` (and `margin`): non-inferiority on every slice of that column: no
      slice's score may be lower than the reference's by more than `margin` (the interval's
      lower bound is what counts).
    """

    metric: str
    min: float | None = None
    max: float | None = None
    min_improvement: float | None = None
    over: str = "production"
    significant: bool = True
    max_forgetting: float | None = Field(None, ge=0)
    slice: str | None = None
    margin: float = Field(0.0, ge=0)

    @property
    def kind(self) -> str:
        if self.max_forgetting is not None:
            return "forgetting"
        if self.slice is not None:
            return "slice"
        if self.min_improvement is not None:
            return "improvement"
        return "threshold"

    @model_validator(mode="after")
    def _one_kind(self) -> GateConfig:
        kinds = [
            self.max_forgetting is not None,
            self.slice is not None,
            self.min_improvement is not None,
            self.min is not None or self.max is not None,
        ]
        if sum(kinds) != 1:
            raise ValueError(
                f"gate on {self.metric!r}: set exactly one of min/max, min_improvement, max_forgetting "
                "or slice (see `tunesmith.yaml` comments for the four kinds)"
            )
        if self.max_forgetting is not None and self.metric not in ("probe_accuracy", "general_perplexity"):
            raise ValueError("max_forgetting gates take metric probe_accuracy or general_perplexity")
        return self


class EvalConfig(_Section):
    """How answers are generated, scored, compared and gated."""

    split: Literal["val", "test"] = "test"
    metrics: list[str] | None = None  # default: the standard set for the task (`eval --list-metrics`)
    max_new_tokens: int = Field(64, gt=0)
    batch_size: int = Field(16, gt=0)
    seed: int = 0
    compare: list[str] = Field(default_factory=lambda: ["base", "production"])  # beside the version
    few_shot: int = Field(0, ge=0)  # also score the base model prompted with k train examples
    max_items: int | None = Field(None, gt=0)  # a seeded sample of the split's items (said in the report)
    slices: list[str] = Field(default_factory=list)  # columns to score separately (label, language...)
    bootstrap_resamples: int = Field(1000, ge=100)
    alpha: float = Field(0.05, gt=0, lt=1)  # significance level of the paired tests
    probe: ProbeConfig = Field(default_factory=ProbeConfig)
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    # a registered reward model (objective reward): scores every system's answers (metric `reward`)
    # and gives the version's win rate against each other system
    reward_model: str | None = None
    gates: list[GateConfig] = Field(default_factory=list)
    # with gates set, a built-in gate: no gated metric may be significantly worse (paired test at
    # `no_regression_alpha`) than a version a gated alias (production) points to, when it is compared
    no_regression: bool = True
    # gates need at least this many items once those a compared version trained on are left out
    min_items: int = Field(30, ge=1)
    no_regression_alpha: float = Field(0.05, gt=0, lt=1)


class CanarySplit(_Section):
    """A share of a route's traffic sent to another version."""

    to: str = Field(min_length=1)  # a version (support-v8) or an alias (support@candidate)
    percent: float = Field(gt=0, le=100)


class TargetRule(_Section):
    """Requests that match go to `to`: every listed header must match, and the caller be in a group."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    to: str = Field(min_length=1)
    headers: dict[str, str] = Field(default_factory=dict)  # header name -> exact value
    groups: list[str] = Field(default_factory=list)  # user groups of the caller's API key

    @model_validator(mode="after")
    def _matches_something(self) -> TargetRule:
        if not self.headers and not self.groups:
            raise ValueError(f"rule {self.name!r} matches every request; give it `headers` or `groups`")
        return self


RolloutStep = Literal["shadow", "internal"] | float
DEFAULT_ROLLOUT: tuple[RolloutStep, ...] = ("shadow", "internal", 5.0, 25.0, 100.0)


class RolloutPlan(_Section):
    """How `tunesmith serve rollout start` moves a version through a route, one step at a time."""

    steps: list[RolloutStep] = Field(default_factory=lambda: list(DEFAULT_ROLLOUT))
    hold_minutes: float = Field(60.0, gt=0)  # each step's gates must hold this long before the next
    internal_groups: list[str] = Field(default_factory=lambda: ["internal"])  # who the `internal` step serves
    gates: list[str] = Field(default_factory=lambda: ["error_rate", "latency"])  # registered rollout gates
    max_error_rate: float = Field(0.02, ge=0, le=1)  # error_rate: share of the version's requests failing
    max_latency_ratio: float = Field(1.5, gt=0)  # latency: its p95 over the primary's p95
    min_requests: int = Field(20, ge=0)  # a step with fewer requests waits instead of advancing
    # score gate: online scores compared with the primary's, each with the drop it tolerates (in its units)
    scores: dict[str, float] = Field(default_factory=lambda: {"relevance": 0.05})
    min_scores: int = Field(20, ge=2)  # score gate: scores needed on each side before it decides
    max_feedback_increase: float = Field(0.05, ge=0, le=1)  # feedback gate: negative rate over the primary's
    min_feedback: int = Field(10, ge=2)  # feedback gate: ratings needed on each side before it decides
    level: float = Field(0.95, gt=0.5, lt=1)  # confidence of the score and feedback gates' intervals

    @field_validator("scores")
    @classmethod
    def _tolerances(cls, scores: dict[str, float]) -> dict[str, float]:
        if any(t < 0 for t in scores.values()):
            raise ValueError("each score's tolerated drop is 0 or more, in the score's own units")
        return scores

    @field_validator("steps")
    @classmethod
    def _steps(cls, steps: list[Any]) -> list[Any]:
        percents = [s for s in steps if not isinstance(s, str)]
        if not steps or not percents or percents[-1] != 100:
            raise ValueError("a rollout ends at 100 (all traffic), e.g. [shadow, internal, 5, 25, 100]")
        if any(not 0 < p <= 100 for p in percents) or percents != sorted(percents):
            raise ValueError("percentages must rise, each in (0, 100]")
        return steps


class RouteConfig(_Section):
    """Traffic policy for one model name that clients ask for."""

    model: str = Field(min_length=1)  # family@alias, family (its production alias), or a version
    canary: list[CanarySplit] = Field(default_factory=list)
    shadow: str | None = None  # a version or alias that answers a mirror of each request, never returned
    shadow_percent: float = Field(100.0, gt=0, le=100)  # share of requests mirrored
    rules: list[TargetRule] = Field(default_factory=list)  # checked in order, before the canary
    sticky: str = "user"  # what keeps a caller on one side: `user` (the request's user field) or a header
    rollout: RolloutPlan = Field(default_factory=RolloutPlan)

    @field_validator("canary")
    @classmethod
    def _canary_total(cls, splits: list[CanarySplit]) -> list[CanarySplit]:
        if sum(s.percent for s in splits) > 100:
            raise ValueError("canary percentages add up to more than 100")
        return splits


class RateLimitConfig(_Section):
    """Per-API-key limits of `tunesmith serve`; a key's own (`serve keys create --rpm/--tpm`) win."""

    requests_per_minute: int | None = Field(None, gt=0)  # None: no limit
    # prompt tokens plus max_tokens x n, counted when a request is admitted (as OpenAI counts them)
    tokens_per_minute: int | None = Field(None, gt=0)
    storage: str = "memory://"  # where counters live; redis://HOST:6379 shares them across replicas


class ServeConfig(_Section):
    """`tunesmith serve`: where it listens, what it loads, how it routes and what it allows."""

    host: str = "127.0.0.1"
    port: int = Field(8000, gt=0, lt=65536)
    # auto: llama.cpp on a CPU for the versions it can run, transformers for the rest (and on a GPU);
    # or transformers, llamacpp, vllm (`tunesmith serve --list-backends`)
    backend: str = "auto"
    # loaded and warmed up at start, and the only names (with the routes' targets) that may be served;
    # empty: the production aliases at start, and any registered generative version on demand
    models: list[str] = Field(default_factory=list)
    routes: list[RouteConfig] = Field(default_factory=list)
    runtime_config: str | None = None  # YAML of per-model system prompts, defaults and stops; hot-reloaded
    max_batch_size: int = Field(8, gt=0)  # sequences generated together
    batch_wait_ms: float = Field(5.0, ge=0)  # how long a batch waits to fill
    max_queue: int = Field(64, gt=0)  # waiting sequences before new requests get 429
    # waiting sequences one API key may hold (default: half of max_queue), so one client cannot fill it
    max_queue_per_key: int | None = Field(None, gt=0)
    rate_limit: RateLimitConfig = Field(default_factory=RateLimitConfig)
    # versions held in memory at once; loading one more unloads the least recently used idle one
    max_loaded: int | None = Field(None, gt=0)
    max_tokens: int = Field(1024, gt=0)  # the most `max_tokens` a request may ask for
    default_max_tokens: int = Field(256, gt=0)
    max_n: int = Field(8, gt=0)
    max_request_bytes: int = Field(1_000_000, gt=0)
    poll_seconds: float = Field(
        1.0, gt=0
    )  # how often alias moves, keys, the runtime config and rollouts are read
    # keys: every request needs an active API key (none active: every request gets 401);
    # none: anyone may call every route, admin included; allowed on a loopback host only
    auth: Literal["keys", "none"] = "keys"
    log_requests: bool = True  # write every request and answer to the store (monitoring reads it)
    log_flush_seconds: float = Field(0.2, gt=0, le=60)  # how often logged rows go to the store in a batch
    # scrub: emails, phones, cards, IBANs, SSNs and IP addresses in prompts, answers, metadata and
    # feedback become [EMAIL], [PHONE], ... before they are logged (data.clean.pii_keep is kept)
    log_pii: Literal["keep", "scrub"] = "keep"

    @model_validator(mode="after")
    def _unique_routes(self) -> ServeConfig:
        names = [r.model for r in self.routes]
        if len(names) != len(set(names)):
            raise ValueError("two routes serve the same model name")
        if self.default_max_tokens > self.max_tokens:
            raise ValueError("default_max_tokens is above max_tokens")
        return self


class RegistryConfig(_Section):
    """Aliases and the rules for moving them."""

    aliases: list[str] = Field(default_factory=lambda: ["candidate", "staging", "production", "shadow"])
    gated: list[str] = Field(default_factory=lambda: ["production"])  # need a passing eval gate report
    require_approval: bool = False  # production also needs an approval by someone who did not train it
    intended_use: str = ""  # for the model card: what the versions are for
    limitations: str = ""  # for the model card: what they must not be used for, known failure modes

    @field_validator("aliases", "gated")
    @classmethod
    def _alias_names(cls, names: list[str]) -> list[str]:
        for name in names:
            if not re.fullmatch(r"[a-z][a-z0-9_-]{0,99}", name):
                raise ValueError(f"alias {name!r}: use lower-case letters, digits, - and _")
        return names


class DriftConfig(_Section):
    """When `tunesmith monitor drift` calls recent prompts drifted from the served version's training data."""

    window: int = Field(500, gt=0)  # the most recent requests compared
    min_requests: int = Field(30, gt=1)  # fewer, and there is not enough to tell
    alpha: float = Field(0.01, gt=0, lt=1)  # MMD permutation test significance level
    max_auc: float = Field(0.75, gt=0.5, le=1)  # classifier two-sample AUC above this: drift
    max_psi: float = Field(0.25, gt=0)  # population stability index of a descriptor above this: drift
    permutations: int = Field(200, ge=50)


class AlertRule(_Section):
    """A condition on a served version over a time window, where to say it, and what to do."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    # p95_latency_ms, error_rate, negative_feedback_rate, requests, score:NAME (a scorer's mean),
    # drift_auc, drift_psi (the largest descriptor PSI), drift_mmd_p
    metric: str = Field(
        pattern=r"^(p95_latency_ms|error_rate|negative_feedback_rate|requests|drift_auc|drift_psi"
        r"|drift_mmd_p|score:[a-z0-9_]+)$"
    )
    op: Literal[">", ">=", "<", "<="] = ">"
    threshold: float
    window_minutes: float = Field(15.0, gt=0)
    model: str | None = None  # family@alias or a version; unset: every version with traffic in the window
    min_requests: int = Field(20, ge=1)  # fewer in the window: the rule stays quiet
    channels: list[str] = Field(default_factory=lambda: ["log"])  # log, webhook
    webhook: str | None = None  # the URL the webhook channel posts to
    action: Literal["none", "rollback"] = "none"  # rollback: move `model`'s alias back, in its history
    cooldown_minutes: float = Field(30.0, ge=0)  # quiet time after firing for the same version

    @model_validator(mode="after")
    def _consistent(self) -> AlertRule:
        if "webhook" in self.channels and not self.webhook:
            raise ValueError(f"alert {self.name!r} sends to a webhook but has no `webhook` URL")
        if self.action == "rollback" and (self.model is None or "@" not in self.model):
            raise ValueError(f"alert {self.name!r} rolls back: set `model` to the family@alias to move back")
        return self


class MonitorConfig(_Section):
    """Production monitoring: online scorers, drift thresholds."""

    # share of answers scored online; sampled, so scoring never competes with answering on a busy server
    sample_rate: float = Field(0.1, ge=0.0, le=1.0)
    scorers: list[str] = Field(
        default_factory=lambda: ["empty", "truncated", "refusal", "toxicity", "relevance", "length", "pii"]
    )
    reference_metrics: list[str] = Field(
        default_factory=lambda: ["rouge_l", "chrf"]
    )  # vs a user's correction
    toxicity_words: str | None = None  # a file of words and phrases, one per line; default: the bundled list
    drift: DriftConfig = Field(default_factory=DriftConfig)
    judge: JudgeConfig = Field(
        default_factory=JudgeConfig
    )  # an endpoint judge (`judge.endpoint`) for online use
    judge_sample_rate: float = Field(0.0, ge=0.0, le=1.0)  # share of scored answers also given a judge score
    reward_model: str | None = None  # a reward-model version that scores every sampled answer (`reward`)
    alerts: list[AlertRule] = Field(default_factory=list)
    alert_interval_seconds: float = Field(60.0, gt=0)  # how often a running server checks the rules


class UiConfig(_Section):
    """`tunesmith ui`: the web app over the workspace's store."""

    host: str = "127.0.0.1"
    port: int = Field(8600, gt=0, lt=65536)
    page_size: int = Field(50, ge=5, le=500)  # rows per page of every list
    session_hours: float = Field(12.0, gt=0)  # how long a sign-in with a key lasts
    # keys: a sign-in with an API key (`tunesmith serve keys create`); none: open, on a loopback host only
    auth: Literal["keys", "none"] = "keys"


class ProjectConfig(_Section):
    """The whole project: one file, one section per stage."""

    project: str = Field("my-project", pattern=r"^[a-z0-9][a-z0-9._-]*$")
    workspace: str = ".tunesmith"
    store_url: str | None = None  # any SQLAlchemy URL; default a SQLite file in the workspace
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    synth: SynthConfig = Field(default_factory=SynthConfig)
    sweep: SweepConfig = Field(default_factory=SweepConfig)
    ui: UiConfig = Field(default_factory=UiConfig)
    # Python modules (dotted names) or files (.py, relative to this file) imported when the config
    # loads, before any command runs: they register scorers, rollout gates, alert channels, metrics
    plugins: list[str] = Field(default_factory=list)

    _base_dir: Path = PrivateAttr(default_factory=Path.cwd)  # relative paths start here

    @property
    def base_dir(self) -> Path:
        return self._base_dir

    def with_base_dir(self, base_dir: Path) -> ProjectConfig:
        """Return this config with relative paths resolved against `base_dir`."""
        self._base_dir = base_dir.resolve()
        return self

    def resolve_path(self, value: str) -> Path:
        """Return `value` as an absolute path, relative to the config file's folder."""
        path = Path(value).expanduser()
        return path if path.is_absolute() else (self.base_dir / path).resolve()

    @property
    def workspace_dir(self) -> Path:
        return self.resolve_path(self.workspace)

    @property
    def weights_dtype(self) -> str:
        """The dtype the base weights load in: `model.dtype`, with `auto` decided for this run and machine."""
        if self.model.dtype != "auto":
            return self.model.dtype
        # reward keeps float32: TRL's reward trainer wraps the model itself and would train its new
        # head in bfloat16; classify and tag keep their head in float32 (models.loading.float32_heads).
        adapters_train = self.train.objective in (*GENERATIVE_OBJECTIVES, "classify", "tag")
        if adapters_train and self.train.method in ("lora", "qlora"):
            return "bfloat16" if native_bf16() else "float32"
        return "float32"

    @property
    def resolved_store_url(self) -> str:
        """The store URL: `TUNESMITH_DB_URL`, else `store_url`, else SQLite in the workspace."""
        return (
            os.environ.get(DB_URL_ENV) or self.store_url or f"sqlite:///{self.workspace_dir / 'tunesmith.db'}"
        )

    def resolved(self) -> dict[str, Any]:
        """The config as plain data, every default filled in: what a run records."""
        return self.model_dump(mode="json", by_alias=False)


class ConfigIssue(BaseModel):
    """One problem in a config: where it is and what is wrong."""

    path: str  # dotted field path, e.g. train.learning_rate
    message: str
    location: str | None = None  # file:line when the value came from a file

    def __str__(self) -> str:
        where = f"{self.location}: " if self.location else ""
        return f"{where}{self.path}: {self.message}"


class ConfigError(Exception):
    """A config that cannot be used, with every problem found."""

    def __init__(self, issues: list[ConfigIssue], source: str) -> None:
        self.issues = issues
        self.source = source
        lines = "\n".join(f"  - {issue}" for issue in issues)
        super().__init__(f"{source}: {len(issues)} problem(s) in the config:\n{lines}")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ProjectConfig:
    """Load, override and validate a project config.

    Args:
        path: a YAML file; `None` looks for `tunesmith.yaml` in the current folder and falls back
            to the defaults when there is none.
        overrides: `dotted.path=value` strings; values are parsed as YAML (`1e-4`, `true`, `[a, b]`).

    Raises:
        ConfigError: with every problem found, each with its field path and file:line.
    """
    file = Path(path) if path is not None else Path(CONFIG_FILENAME)
    source = str(file)
    data: dict[str, Any] = {}
    lines: dict[tuple[str, ...], int] = {}
    if file.exists():
        data, lines = _read_yaml(file)
    elif path is not None:
        raise ConfigError(
            [ConfigIssue(path="(file)", message="no such file; create one with `tunesmith init`")], source
        )

    issues: list[ConfigIssue] = []
    overridden: dict[tuple[str, ...], str] = {}  # field path -> the `--set` that gave its value
    for override in overrides or []:
        issue = _apply_override(data, override, overridden)
        if issue is not None:
            issues.append(issue)
    base_dir = file.resolve().parent if file.exists() else Path.cwd()
    try:
        config = ProjectConfig.model_validate(data).with_base_dir(base_dir)
    except ValidationError as exc:
        raise ConfigError(issues + _issues(exc, file, lines, overridden), source) from None
    if issues:
        raise ConfigError(issues, source)
    load_plugins(config, source, lines)
    return config


def load_plugins(config: ProjectConfig, source: str, lines: dict[tuple[str, ...], int]) -> None:
    """Import each of `config.plugins` once per process (a file under a name made from its path).

    Raises:
        ConfigError: naming the plugin, its line, and the error its import raised.
    """
    import importlib
    import importlib.util
    import sys

    for n, plugin in enumerate(config.plugins):
        try:
            if not plugin.endswith(".py"):
                importlib.import_module(plugin)
                continue
            path = config.resolve_path(plugin)
            name = "tunesmith_plugin_" + hashlib.sha256(str(path).encode()).hexdigest()[:12]
            if name in sys.modules:
                continue
            spec = importlib.util.spec_from_file_location(name, path)
            if spec is None or spec.loader is None or not path.is_file():
                raise FileNotFoundError(f"no such file: {path}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[name]
                raise
        except Exception as exc:
            at = lines.get(("plugins", str(n))) or lines.get(("plugins",))
            issue = ConfigIssue(
                path=f"plugins[{n}]",
                message=f"cannot import {plugin!r}: {type(exc).__name__}: {exc}",
                location=f"{source}:{at}" if at else None,
            )
            raise ConfigError([issue], source) from None


def load_section_file(path: Path, section: type[SectionT]) -> SectionT:
    """Load a YAML file that holds one section type (e.g. the server's runtime config).

    Raises:
        ConfigError: every problem with its field path and file:line.
    """
    if not path.exists():
        raise ConfigError([ConfigIssue(path="(file)", message="no such file")], str(path))
    data, lines = _read_yaml(path)
    try:
        return section.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_issues(exc, path, lines), str(path)) from None


def _read_yaml(file: Path) -> tuple[dict[str, Any], dict[tuple[str, ...], int]]:
    """A YAML mapping and the line of each key path in it."""
    text = file.read_text(encoding="utf-8")
    try:
        loaded = yaml.safe_load(text)
        lines = _line_numbers(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{file}:{mark.line + 1}" if mark is not None else str(file)
        raise ConfigError(
            [ConfigIssue(path="(file)", message=f"not valid YAML: {exc}", location=where)], str(file)
        ) from exc
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(
            [ConfigIssue(path="(file)", message="the top level must be a mapping", location=f"{file}:1")],
            str(file),
        )
    return loaded or {}, lines


def _issues(
    exc: ValidationError,
    file: Path,
    lines: dict[tuple[str, ...], int],
    overridden: dict[tuple[str, ...], str] | None = None,
) -> list[ConfigIssue]:
    """Each validation error where its value came from: the `--set` that gave it, named as it was
    written there (`train.epochs`), or the file's line."""
    issues, overridden = [], overridden or {}
    for error in exc.errors():
        keys = tuple(str(part) for part in error["loc"])
        given = next((keys[:n] for n in range(len(keys), 0, -1) if keys[:n] in overridden), None)
        if given is not None:
            override = overridden[given]
            written = ".".join([override.partition("=")[0].strip(), *keys[len(given) :]])
            issues.append(ConfigIssue(path=written, message=_describe(error), location=f"--set {override}"))
            continue
        line = _nearest_line(lines, keys)
        issues.append(
            ConfigIssue(
                path=".".join(keys) or "(root)",
                message=_describe(error),
                location=f"{file}:{line}" if line is not None else None,
            )
        )
    return issues


def _describe(error: Any) -> str:
    if error["type"] == "extra_forbidden":
        return "unknown field (check the spelling; `tunesmith init` writes every field with a comment)"
    message = str(error["msg"])
    if "input" in error and not isinstance(error["input"], dict):
        message += f" (got {error['input']!r})"
    return message


def _apply_override(
    data: dict[str, Any], override: str, applied: dict[tuple[str, ...], str] | None = None
) -> ConfigIssue | None:
    """Set the value of one `--set section.field=value` in `data` (recording the field's path in
    `applied`), or say what is wrong with the override."""
    key, sep, raw = override.partition("=")
    if not sep or not key.strip():
        return ConfigIssue(
            path=override,
            message="an override is `section.field=value`, e.g. train.lr=1e-4",
            location="--set",
        )
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    node = data
    parts = key.strip().split(".")
    path: tuple[str, ...] = ()
    section: type[BaseModel] | None = ProjectConfig
    for part in parts[:-1]:
        indexed = re.fullmatch(r"(\w+)\[(\d+)\]", part)
        if indexed is not None:  # `train.tasks[1].weight=2`: an item of a list of sections
            name, index = indexed.group(1), int(indexed.group(2))
            items = node.get(name)
            if not isinstance(items, list) or index >= len(items) or not isinstance(items[index], dict):
                count = len(items) if isinstance(items, list) else 0
                return ConfigIssue(
                    path=key, message=f"`{name}` has {count} item(s); no item {index}", location="--set"
                )
            node, section = items[index], _subsection(section, name)
            path += (name, str(index))
            continue
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            return ConfigIssue(path=key, message=f"`{part}` is a value, not a section", location="--set")
        node = child
        section = _subsection(section, part)
        path += (part,)
    name = _canonical_name(section, parts[-1])
    for other in _field_names(section, name):  # `--set train.lr=...` replaces a `learning_rate:` in the file
        node.pop(other, None)
    node[name] = value
    if applied is not None:
        applied[(*path, name)] = override.strip()
    return None


def _subsection(section: type[BaseModel] | None, name: str) -> type[BaseModel] | None:
    """The section type of field `name` (of its items, for a list; of its value, for an optional one)."""
    field = section.model_fields.get(name) if section is not None else None
    annotation = field.annotation if field is not None else None
    for candidate in (annotation, *get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _field_names(section: type[BaseModel] | None, name: str) -> list[str]:
    """Every name (the field's own and its aliases) that sets field `name` of `section`."""
    field = section.model_fields.get(name) if section is not None else None
    if field is None:
        return []
    alias = field.validation_alias
    choices = [c for c in alias.choices if isinstance(c, str)] if isinstance(alias, AliasChoices) else []
    return [name, *choices]


def _canonical_name(section: type[BaseModel] | None, key: str) -> str:
    for name in section.model_fields if section is not None else ():
        if key in _field_names(section, name):
            return name
    return key


def _line_numbers(text: str) -> dict[tuple[str, ...], int]:
    """Map every key path in a YAML document to its 1-based line."""
    found: dict[tuple[str, ...], int] = {}

    def walk(node: yaml.Node, prefix: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                path = (*prefix, str(key_node.value))
                found[path] = key_node.start_mark.line + 1
                walk(value_node, path)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                path = (*prefix, str(index))
                found[path] = item.start_mark.line + 1
                walk(item, path)

    root = yaml.compose(text)
    if root is not None:
        walk(root, ())
    return found


def _nearest_line(lines: dict[tuple[str, ...], int], keys: tuple[str, ...]) -> int | None:
    """The line of the deepest key of `keys` that the file has (a missing field points at its section)."""
    for end in range(len(keys), 0, -1):
        if keys[:end] in lines:
            return lines[keys[:end]]
    return None


def native_bf16() -> bool:
    """True where bfloat16 matrix products run natively: a CUDA GPU that has them, or an x86 CPU with
    AVX512-BF16 or AMX (elsewhere bfloat16 is emulated and slower than float32)."""
    import torch

    if torch.cuda.is_available():
        return bool(torch.cuda.is_bf16_supported())
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        return False
    flags = set()
    for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
            break
    return bool(flags & {"avx512_bf16", "amx_bf16"})
