"""What the registry tells about versions: diffs and model cards (`train.run.reproduce` trains one again)."""

from __future__ import annotations

import math
from typing import Any

from sqlalchemy import select

from tunesmith.config import ProjectConfig, RegistryConfig
from tunesmith.registry.versions import all_metrics
from tunesmith.store import DatasetVersion, EvalReport, ModelVersion, session
from tunesmith.workspace import Workspace

NOT_COMPARABLE = ("runtime", "per_second", "flos", "memory", "seconds", "tokens_per")


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """`{"train": {"lr": 1e-4}}` as `{"train.lr": 1e-4}`."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, inner in value.items():
            out.update(flatten(inner, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def shared_report(workspace: Workspace, a: ModelVersion, b: ModelVersion) -> EvalReport | None:
    """The newest eval report that scored both versions on the same items."""
    with session(workspace.engine) as s:
        reports = s.scalars(select(EvalReport).order_by(EvalReport.created_at.desc()))
        for report in reports:
            ids = {system.get("version_id") for system in report.systems}
            if a.id in ids and b.id in ids:
                return report
    return None


def diff(workspace: Workspace, a: ModelVersion, b: ModelVersion) -> dict[str, Any]:
    """Config keys that differ, dataset changes, and metric deltas (with intervals when an eval
    report compared the two)."""
    import json
    from pathlib import Path

    from tunesmith.data.versions import diff_versions

    config_a, config_b = flatten(a.config), flatten(b.config)
    changed = {
        key: [config_a.get(key), config_b.get(key)]
        for key in sorted(set(config_a) | set(config_b))
        if config_a.get(key) != config_b.get(key)
    }
    result: dict[str, Any] = {"a": a.name, "b": b.name, "config": changed}
    for field in ("base_model", "base_revision", "method", "seed"):
        if getattr(a, field) != getattr(b, field):
            result.setdefault("record", {})[field] = [getattr(a, field), getattr(b, field)]
    if a.dataset_version_id != b.dataset_version_id and a.dataset_version_id and b.dataset_version_id:
        with session(workspace.engine) as s:
            data_a, data_b = (
                s.get(DatasetVersion, a.dataset_version_id),
                s.get(DatasetVersion, b.dataset_version_id),
            )
        if data_a is not None and data_b is not None:
            result["data"] = diff_versions(data_a, data_b)
    else:
        result["data"] = {"same": a.dataset_version_id}
    report = shared_report(workspace, a, b)
    if report is not None:
        full = json.loads((Path(report.path) / "report.json").read_text(encoding="utf-8"))
        labels = {system["version_id"]: system["label"] for system in full["systems"]}
        pair = {labels[a.id], labels[b.id]}
        rows = []
        for row in full["comparisons"]:
            if {row["a"], row["b"]} != pair:
                continue
            sign = 1 if row["b"] == labels[b.id] else -1  # always b minus a
            delta = row["delta"]
            low, high = sorted((sign * delta["low"], sign * delta["high"]))
            rows.append(
                {
                    "metric": row["metric"],
                    "delta": sign * delta["value"],
                    "low": low,
                    "high": high,
                    "p_value": row["p_value"],
                }
            )
        result["metrics"] = {"report": report.id, "items": full["items"], "deltas": rows}
    else:
        metrics_a, metrics_b = all_metrics(workspace, a), all_metrics(workspace, b)
        numbers = {
            key: [metrics_a[key], metrics_b[key]]
            for key in sorted(set(metrics_a) & set(metrics_b))
            if is_number(metrics_a[key])
            and is_number(metrics_b[key])
            and metrics_a[key] != metrics_b[key]
            and not any(word in key for word in NOT_COMPARABLE)
        }
        result["metrics"] = {
            "report": None,
            "note": f"for intervals run `tunesmith eval {b.name} --compare {a.name}`",
            "deltas": [{"metric": k, "a": x, "b": y, "delta": y - x} for k, (x, y) in numbers.items()],
        }
    return result


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def version_record(workspace: Workspace, v: ModelVersion, registry: RegistryConfig) -> dict[str, Any]:
    """Everything recorded about one version: lineage, config, metrics, aliases, reports, approvals."""
    from tunesmith.registry.aliases import aliases_of, approvals, eval_reports

    return {
        "name": v.name,
        "id": v.id,
        "family": v.family,
        "run": v.run_id,
        "parent": v.parent_id,
        "base_model": v.base_model,
        "base_revision": v.base_revision,
        "method": v.method,
        "weights_sha256": v.weights_sha256,
        "dataset_version": v.dataset_version_id,
        "seed": v.seed,
        "artifacts": v.path,
        "created_by": v.created_by,
        "created_at": v.created_at.isoformat(),
        "aliases": [
            a
            for a, target in aliases_of(workspace, v.family, registry).items()
            if target and target.id == v.id
        ],
        "metrics": all_metrics(workspace, v),
        "eval_reports": [
            {
                "id": r.id,
                "gates": {None: "none", True: "passed", False: "failed"}[r.gate_passed],
                "compared": [system["label"] for system in r.systems],
                "at": r.created_at.isoformat(),
                "path": r.path,
            }
            for r in eval_reports(workspace, v)
        ],
        "approvals": [
            {"by": a.approver, "note": a.note, "at": a.at.isoformat()} for a in approvals(workspace, v)
        ],
        "lineage": v.lineage,
        "config": v.config,
    }


def model_card(workspace: Workspace, version: ModelVersion) -> str:
    """A Markdown model card from the version's record and its newest eval report."""
    import json
    from pathlib import Path

    from tunesmith.models import model_info
    from tunesmith.registry.aliases import eval_reports

    config = ProjectConfig.model_validate(version.config)
    try:
        base_licence = model_info(config.model.id, config.model.source, config.model.revision).licence
    except Exception:  # an unreachable hub model: the card says it is unknown
        base_licence = None
    with session(workspace.engine) as s:
        dataset = s.get(DatasetVersion, version.dataset_version_id) if version.dataset_version_id else None
    reports = eval_reports(workspace, version)
    full = json.loads((Path(reports[0].path) / "report.json").read_text()) if reports else None
    lines = [
        f"# {version.name}",
        "",
        f"Fine-tuned from `{version.base_model}` (revision `{version.base_revision or 'unknown'}`, "
        f"licence {base_licence or 'not recorded'}) "
        f"with tunesmith {version.lineage['libraries'].get('tunesmith', '?')}.",
        "",
        "## Intended use and limitations",
        "",
        config.registry.intended_use or "_Not stated: set `registry.intended_use` in tunesmith.yaml._",
        "",
        config.registry.limitations
        or "_Not stated: set `registry.limitations`. A small fine-tune inherits its base model's "
        "limitations and knows only what its data taught it._",
        "",
        "## Training data",
        "",
    ]
    lines += _card_data(dataset, config)
    lines += ["", "## Method and hyperparameters", "", *_card_method(version, config), ""]
    lines += ["## Evaluation", "", *_card_eval(version, full), "", "## Forgetting", ""]
    lines += _card_forgetting(version, full)
    lineage = version.lineage
    lines += [
        "",
        "## Lineage",
        "",
        f"- Version `{version.id}`, run `{version.run_id}`, parent `{version.parent_id or '-'}`",
        f"- Weights sha256 `{version.weights_sha256}`",
        f"- Chat template sha256 `{lineage.get('chat_template_sha256')}`, EOS `{lineage.get('eos_token')}`",
        "- Libraries: " + ", ".join(f"{k} {v}" for k, v in lineage.get("libraries", {}).items()),
        f"- Created by {version.created_by} at {version.created_at:%Y-%m-%d %H:%M} UTC",
        "",
    ]
    return "\n".join(lines)


def _card_method(version: ModelVersion, config: ProjectConfig) -> list[str]:
    """How the weights were made: the training settings, or a merge of other versions'."""
    train = config.train
    lines = []
    merge = version.lineage.get("merge")
    if merge:
        parents = ", ".join(f"`{p['name']}` (weight {p['weight']:g})" for p in merge["parents"])
        density = f", density {merge['density']:g}" if merge.get("density") is not None else ""
        lines += [
            f"- Merged with `{merge['method']}`{density} (seed {merge['seed']}) from {parents}; the "
            f"adapter keeps {merge['energy_kept']:.1%} of the merged deltas' energy",
            f"- The training data above and the settings below are those of `{merge['parents'][0]['name']}`",
        ]
    lines += [
        f"- Objective `{train.objective}`, method `{version.method}`, seed {version.seed}",
        f"- Learning rate {train.learning_rate:g}, {train.num_train_epochs:g} epochs, batch "
        f"{train.per_device_train_batch_size} x {train.gradient_accumulation_steps} accumulation, "
        f"max length {train.max_length}",
    ]
    if version.method in ("lora", "qlora") and not merge:
        lora = train.lora
        lines.append(f"- LoRA r {lora.r}, alpha {lora.lora_alpha}, dropout {lora.lora_dropout}")
    if "rl_verdict" in version.metrics:
        lines.append(f"- RL audit: {version.metrics['rl_verdict']} ({version.metrics['rl_verdict_rule']})")
    return lines


def _card_data(dataset: DatasetVersion | None, config: ProjectConfig) -> list[str]:
    """The card's training-data lines: the dataset version, its licence, and what in it is synthetic."""
    if dataset is None:
        return ["- No dataset version recorded."]
    counts = ", ".join(f"{k} {v}" for k, v in dataset.counts.items())
    lines = [
        f"- Dataset version `{dataset.id}` from `{dataset.source}` ({dataset.format}): {counts}",
        f"- Licence: {config.data.licence or 'not recorded (set `data.licence`)'}",
    ]
    lineage = dataset.meta.get("lineage") or {}
    if lineage.get("source") == "synth":
        what = (
            "paraphrases of train rows" if lineage.get("method") == "paraphrase" else "pairs from documents"
        )
        split = dataset.meta.get("data_config", {}).get("split", {})
        where = (
            "validation and test rows are all real"
            if split.get("synthetic", "train") == "train"
            else "synthetic rows may be in validation and test too"
        )
        lines.append(
            f"- Synthetic: {lineage.get('synthetic_rows', '?')} {what}, written by "
            f"`{lineage.get('teacher')}` (prompt `{lineage.get('prompt_version')}`, run "
            f"`{lineage.get('run')}`); {where}"
        )
    return lines


def _card_eval(version: ModelVersion, full: dict[str, Any] | None) -> list[str]:
    if full is None:
        return [f"_No eval report yet: run `tunesmith eval {version.name}`._"]
    lines = [
        f"Report `{full['id']}` on {full['items']} items of `{full['dataset_version']}` "
        f"({full['split']}); 95% bootstrap intervals.",
        "",
        "| metric | " + " | ".join(s["label"] for s in full["systems"]) + " |",
        "|---|" + "---|" * len(full["systems"]),
    ]
    for metric in full["metrics"]:
        cells = []
        for system in full["systems"]:
            score = system["scores"].get(metric["name"])
            cells.append(f"{score['value']:.3g} [{score['low']:.3g}, {score['high']:.3g}]" if score else "–")
        lines.append(f"| {metric['name']} | " + " | ".join(cells) + " |")
    lines += ["", *[f"- {line}" for line in full["verdicts"]]]
    if full.get("gates"):
        lines.append(f"- Gates: {'passed' if full['gate_passed'] else 'FAILED'}")
    return lines


def _card_forgetting(version: ModelVersion, full: dict[str, Any] | None) -> list[str]:
    probe = full.get("probe") if full else None
    if probe and probe.get("change"):
        lines = []
        for name, change in probe["change"].items():
            d = change["delta"]
            lines.append(
                f"- {name}: {d['value']:+.3g} [{d['low']:+.3g}, {d['high']:+.3g}] "
                f"against the base (p={change['p_value']:.3f})"
            )
        return lines
    if "forgetting" in version.metrics:
        return [
            f"- Loss on general conversations: {version.metrics['general_loss_base']:.3f} before, "
            f"{version.metrics['general_loss_after']:.3f} after training"
        ]
    return [f"_Not measured: run `tunesmith eval {version.name} --probe`._"]
