"""Human A/B review: a blind sheet out, filled sheets back in, win rates with intervals and agreement.

`export_sheet` writes, beside an eval report, a CSV and an HTML page of answer pairs. Each pair
shows the two systems' answers as `response 1` and `response 2` in a random order, with no model
names; which side is which is kept in `key.json`, which raters never see. The HTML page lets a
rater choose and download the filled CSV; a spreadsheet works as well.

`import_sheets` reads one filled CSV per rater (or one CSV with a `rater` column), turns each
choice back into a win, tie or loss for the candidate, and reports the rates with bootstrap
intervals (resampling pairs, so several ratings of one pair move together) and, with two or more
raters, their agreement: Krippendorff's alpha (ordinal: loss < tie < win) and, for exactly two,
Cohen's kappa.
"""

from __future__ import annotations

import csv
import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from tunesmith.data import DataError
from tunesmith.store import EvalReport, session
from tunesmith.workspace import Workspace

COLUMNS = ["pair_id", "prompt", "reference", "response_1", "response_2", "preference", "rater", "comment"]
CHOICES = {"1": "1", "2": "2", "tie": "tie", "t": "tie", "=": "tie", "": ""}
OUTCOME_ORDER = {"loss": 0, "tie": 1, "win": 2}


def export_sheet(
    report_dir: Path, *, against: str | None = None, limit: int | None = None, seed: int = 0
) -> Path:
    """Write `review-<against>/` with sheet.csv, sheet.html and key.json; return that folder.

    `against` is the system the candidate is paired with (default: the first in the report).

    Raises:
        DataError: when the report has no such system or no text answers to compare.
    """
    from jinja2 import Environment, PackageLoader

    report = json.loads((report_dir / "report.json").read_text(encoding="utf-8"))
    if report["task"] != "generation":
        raise DataError(
            f"human A/B review compares generated answers; report {report['id']} is {report['task']}"
        )
    labels = [s["label"] for s in report["systems"]]
    candidate = labels[-1]
    other = against or labels[0]
    if other not in labels[:-1]:
        raise DataError(
            f"report {report['id']} has no system {other!r} to pair with; it has {', '.join(labels[:-1])}"
        )
    rng = random.Random(seed)
    rows = list(report["per_item"])
    rng.shuffle(rows)
    if limit is not None:
        rows = rows[:limit]
    sheet, key = [], {}
    for n, row in enumerate(rows, 1):
        pair_id = f"p{n:04d}"
        flipped = rng.random() < 0.5
        first, second = (other, candidate) if flipped else (candidate, other)
        key[pair_id] = {"item": row["index"], "1": first, "2": second}
        sheet.append(
            {
                "pair_id": pair_id,
                "prompt": row["prompt"],
                "reference": row["reference"],
                "response_1": row["outputs"][first],
                "response_2": row["outputs"][second],
                "preference": "",
                "rater": "",
                "comment": "",
            }
        )
    target = report_dir / f"review-{_slug(other)}"
    target.mkdir(exist_ok=True)
    with (target / "sheet.csv").open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, COLUMNS)
        writer.writeheader()
        writer.writerows(sheet)
    (target / "key.json").write_text(
        json.dumps({"report": report["id"], "candidate": candidate, "other": other, "pairs": key}, indent=2),
        encoding="utf-8",
    )
    environment = Environment(loader=PackageLoader("tunesmith", "evaluate"), autoescape=True)
    html = environment.get_template("review.html.j2").render(rows=sheet, columns=COLUMNS, report=report["id"])
    (target / "sheet.html").write_text(html, encoding="utf-8")
    return target


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in label).strip("-")


def read_sheets(review_dir: Path, files: list[Path]) -> list[dict[str, Any]]:
    """Every rating in the filled sheets: {pair_id, rater, outcome (for the candidate)}.

    Unrated rows are skipped. A rater is the row's `rater` cell, else the file's name.

    Raises:
        DataError: naming file:line for an unknown pair or a preference that is not 1, 2 or tie.
    """
    key = json.loads((review_dir / "key.json").read_text(encoding="utf-8"))
    candidate = key["candidate"]
    ratings = []
    for path in files:
        if not path.exists():
            raise DataError(f"{path} does not exist")
        with path.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle)
            missing = {"pair_id", "preference"} - set(reader.fieldnames or [])
            if missing:
                raise DataError(f"{path}:1: the sheet has no {', '.join(sorted(missing))} column")
            for row in reader:
                line = reader.line_num  # the file line where this record ends
                pair_id = (row.get("pair_id") or "").strip()
                choice = (row.get("preference") or "").strip().lower()
                if choice not in CHOICES:
                    raise DataError(
                        f"{path}:{line}: preference {row['preference']!r} is not 1, 2 or tie "
                        "(leave it blank for not rated)"
                    )
                if not CHOICES[choice]:
                    continue
                if pair_id not in key["pairs"]:
                    raise DataError(f"{path}:{line}: pair {pair_id!r} is not in this review's sheet")
                chosen = CHOICES[choice]
                outcome = (
                    "tie"
                    if chosen == "tie"
                    else "win"
                    if key["pairs"][pair_id][chosen] == candidate
                    else "loss"
                )
                rater = (row.get("rater") or "").strip() or path.stem
                ratings.append({"pair_id": pair_id, "rater": rater, "outcome": outcome})
    if not ratings:
        raise DataError("the sheets hold no ratings: fill the preference column with 1, 2 or tie")
    return ratings


def summarise(
    ratings: list[dict[str, Any]], candidate: str, other: str, *, resamples: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Win/tie/loss rates with pair-resampled intervals, per rater and pooled, and agreement."""
    pairs = sorted({r["pair_id"] for r in ratings})
    raters = sorted({r["rater"] for r in ratings})
    index = {p: i for i, p in enumerate(pairs)}
    stats = np.zeros((len(pairs), 4))  # wins, ties, losses, ratings per pair
    for r in ratings:
        stats[index[r["pair_id"]], ["win", "tie", "loss"].index(r["outcome"])] += 1
        stats[index[r["pair_id"]], 3] += 1
    counts = Counter(r["outcome"] for r in ratings)
    result: dict[str, Any] = {
        "candidate": candidate,
        "other": other,
        "pairs": len(pairs),
        "ratings": len(ratings),
        "raters": raters,
        "counts": {k: counts[k] for k in ("win", "tie", "loss")},
        "rates": _rates(stats, resamples, seed),
        "per_rater": {
            rater: dict(Counter(r["outcome"] for r in ratings if r["rater"] == rater)) for rater in raters
        },
    }
    if len(raters) >= 2:
        result["agreement"] = agreement(ratings, pairs, raters)
    return result


def _rates(stats: np.ndarray, resamples: int, seed: int) -> dict[str, dict[str, float]]:
    from tunesmith.evaluate.stats import bootstrap_interval

    scorers = {
        "win": lambda s: float(s[0] / s[3]) if s[3] else 0.0,
        "tie": lambda s: float(s[1] / s[3]) if s[3] else 0.0,
        "loss": lambda s: float(s[2] / s[3]) if s[3] else 0.0,
        "win_rate_ties_half": lambda s: float((s[0] + 0.5 * s[1]) / s[3]) if s[3] else 0.0,
    }
    return {
        name: bootstrap_interval(stats, score, resamples=resamples, seed=seed).as_dict()
        for name, score in scorers.items()
    }


def agreement(ratings: list[dict[str, Any]], pairs: list[str], raters: list[str]) -> dict[str, Any]:
    """Krippendorff's alpha (ordinal) over all raters; Cohen's kappa and raw agreement for two."""
    import krippendorff

    matrix = np.full((len(raters), len(pairs)), np.nan)
    for r in ratings:
        matrix[raters.index(r["rater"]), pairs.index(r["pair_id"])] = OUTCOME_ORDER[r["outcome"]]
    shared = [j for j in range(len(pairs)) if np.sum(~np.isnan(matrix[:, j])) >= 2]
    out: dict[str, Any] = {"pairs_rated_by_several": len(shared)}
    values = matrix[:, shared]
    if len(shared) >= 2 and len(np.unique(values[~np.isnan(values)])) > 1:
        out["krippendorff_alpha"] = float(
            krippendorff.alpha(reliability_data=matrix, level_of_measurement="ordinal")
        )
    else:
        out["krippendorff_alpha"] = None  # undefined: too few shared pairs, or every rating the same
    if len(raters) == 2 and shared:
        from sklearn.metrics import cohen_kappa_score

        a, b = matrix[0, shared], matrix[1, shared]
        both = ~np.isnan(a) & ~np.isnan(b)
        out["percent_agreement"] = float(np.mean(a[both] == b[both]))
        out["cohen_kappa"] = (
            float(cohen_kappa_score(a[both], b[both])) if len(set(a[both]) | set(b[both])) > 1 else None
        )
    return out


def import_sheets(
    review_dir: Path, files: list[Path], *, resamples: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Read filled sheets, summarise them, and write `result.json` in the review folder."""
    key = json.loads((review_dir / "key.json").read_text(encoding="utf-8"))
    ratings = read_sheets(review_dir, files)
    result = summarise(ratings, key["candidate"], key["other"], resamples=resamples, seed=seed)
    result["report"] = key["report"]
    result["files"] = [str(f) for f in files]
    (review_dir / "result.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    return result


def report_dir(workspace: Workspace, report_id: str) -> Path:
    """The folder of eval report `report_id`.

    Raises:
        DataError: when the store has no such report.
    """
    with session(workspace.engine) as s:
        row = s.get(EvalReport, report_id)
    if row is None:
        raise DataError(
            f"no eval report {report_id!r}; `tunesmith eval VERSION` prints the id of the one it writes"
        )
    return Path(row.path)
