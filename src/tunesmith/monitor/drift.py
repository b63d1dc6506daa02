"""Drift: are recent prompts still like the data the served version was trained on?

The reference is the train split of the version's dataset (from its lineage); the current sample
is the version's most recent requests in the log. Three views, each with a threshold
(`monitor.drift`):

- embeddings (the bundled MiniLM): the maximum mean discrepancy with an RBF kernel and a
  permutation p-value, and a classifier two-sample test — the cross-validated ROC AUC of a
  logistic regression told to separate the two sets (0.5: indistinguishable);
- scalar descriptors: the population stability index of prompt length, the share of non-Latin
  letters (the language mix), digits, and the refusal rate of the answers against the training
  answers;
- what differs: the words most over-represented on each side (log-odds with an informative
  Dirichlet prior, Monroe et al. 2008) and the recent prompts least like the training data.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import select

from tunesmith.chat import asked
from tunesmith.config import DriftConfig
from tunesmith.data.clean import prompt_text
from tunesmith.monitor.scorers import REFUSAL, answer_of, prompt_of
from tunesmith.store import DatasetVersion, ModelVersion, RequestLog, session
from tunesmith.toolcalls import written_answer
from tunesmith.workspace import Workspace

MAX_REFERENCE = 2000  # training prompts compared (a seeded sample of larger sets)


class DriftError(ValueError):
    """Drift cannot be measured: the message says what is missing."""


@dataclass
class DriftReport:
    version: str
    dataset: str
    reference: int
    current: int
    mmd: float
    mmd_p: float
    auc: float
    psi: dict[str, float]
    words_current: list[tuple[str, float]]
    words_reference: list[tuple[str, float]]
    examples: list[str]
    reasons: list[str] = field(default_factory=list)

    @property
    def drifted(self) -> bool:
        return bool(self.reasons)

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "drifted": self.drifted}


def reference_texts(
    workspace: Workspace, version: ModelVersion
) -> tuple[DatasetVersion, list[str], list[str]]:
    """(dataset, prompts, answers) of the version's train split: a chat row's prompt is its last user
    turn, as a served request's is (`prompt_of`), so a multi-turn set is not drift by construction."""
    from tunesmith.data.prepare import load_split

    with session(workspace.engine) as s:
        dataset = s.get(DatasetVersion, version.dataset_version_id) if version.dataset_version_id else None
    if dataset is None:
        raise DriftError(f"{version.name} has no dataset in its lineage to compare recent prompts with")
    rows = load_split(dataset, "train")
    prompts = [asked(r["messages"]) if "messages" in r else prompt_text(r) for r in rows]
    answers = [written_answer(r["messages"][-1]) if "messages" in r else "" for r in rows]
    return dataset, prompts, answers


@dataclass(frozen=True)
class Traffic:
    """Which of a version's answered requests count: those since `since`, its shadow answers too
    with `shadow` (a rollout's candidate answers as a shadow before it takes live traffic)."""

    since: datetime | None = None
    shadow: bool = False


def recent_texts(
    workspace: Workspace, version: ModelVersion, window: int, traffic: Traffic = Traffic()
) -> tuple[list[str], list[str]]:
    """(prompts, first answers) of the version's latest `window` answered requests of `traffic`."""
    conditions = [RequestLog.version_id == version.id, RequestLog.status == 200]
    if not traffic.shadow:
        conditions.append(RequestLog.route != "shadow")
    if traffic.since is not None:
        conditions.append(RequestLog.at >= traffic.since)
    with session(workspace.engine) as s:
        rows = s.execute(
            select(RequestLog.prompt, RequestLog.output)  # the two columns it compares, not whole rows
            .where(*conditions)
            .order_by(RequestLog.at.desc())
            .limit(window)
        ).all()
    prompts = [prompt_of({"prompt": prompt}) for prompt, _ in rows]
    answers = [answer_of(str(output[0])) if output else "" for _, output in rows]  # as training wrote them
    return prompts, answers


def measure_drift(
    reference_prompts: list[str],
    current_prompts: list[str],
    config: DriftConfig,
    *,
    reference_answers: list[str] | None = None,
    current_answers: list[str] | None = None,
    embedder: Any = None,
    seed: int = 0,
    reference_key: str | None = None,
) -> DriftReport:
    """Compare two sets of prompts (and optionally their answers); see the module doc.

    `reference_key` names the reference set (a version's training prompts): its embeddings are
    computed once and kept by the embedder for the next comparison with the same key.
    """
    if len(current_prompts) < config.min_requests:
        raise DriftError(
            f"{len(current_prompts)} recent requests; drift needs at least {config.min_requests} "
            "(monitor.drift.min_requests)"
        )
    rng = np.random.default_rng(seed)
    if len(reference_prompts) > MAX_REFERENCE:
        keep = sorted(rng.choice(len(reference_prompts), MAX_REFERENCE, replace=False))
        reference_prompts = [reference_prompts[i] for i in keep]
        if reference_answers is not None:
            reference_answers = [reference_answers[i] for i in keep]
    if embedder is None:
        from tunesmith.models.embed import Embedder

        embedder = Embedder()
    kept = getattr(embedder, "encode_kept", None)
    x = (
        kept(reference_key, reference_prompts)
        if kept and reference_key
        else embedder.encode(reference_prompts)
    )
    y = embedder.encode(current_prompts)
    mmd, p = mmd_test(x, y, config.permutations, rng)
    auc, current_scores = classifier_auc(x, y, seed)
    psi = {
        name: population_stability(describe(reference_prompts, fn), describe(current_prompts, fn))
        for name, fn in DESCRIPTORS.items()
    }
    if reference_answers and current_answers:
        psi["refusal_rate"] = population_stability(
            [float(bool(REFUSAL.search(a))) for a in reference_answers],
            [float(bool(REFUSAL.search(a))) for a in current_answers],
            binary=True,
        )
    over_current, over_reference = distinctive_words(reference_prompts, current_prompts)
    order = np.argsort(-current_scores)
    report = DriftReport(
        version="",
        dataset="",
        reference=len(reference_prompts),
        current=len(current_prompts),
        mmd=mmd,
        mmd_p=p,
        auc=auc,
        psi=psi,
        words_current=over_current,
        words_reference=over_reference,
        examples=[current_prompts[i] for i in order[:5]],
    )
    if p < config.alpha:
        report.reasons.append(f"embedding MMD {mmd:.4f}, p = {p:.3f} < {config.alpha}")
    if auc > config.max_auc:
        report.reasons.append(
            f"a classifier tells recent prompts from training prompts with AUC {auc:.2f} > {config.max_auc}"
        )
    for name, value in psi.items():
        if value > config.max_psi:
            report.reasons.append(f"PSI of {name} {value:.2f} > {config.max_psi}")
    return report


def drift_for_version(
    workspace: Workspace,
    version: ModelVersion,
    config: DriftConfig,
    *,
    embedder: Any = None,
    traffic: Traffic = Traffic(),
) -> DriftReport:
    """Drift of the version's recent prompts (of `traffic`: all live ones by default) against its own
    training data."""
    dataset, ref_prompts, ref_answers = reference_texts(workspace, version)
    cur_prompts, cur_answers = recent_texts(workspace, version, config.window, traffic)
    report = measure_drift(
        ref_prompts,
        cur_prompts,
        config,
        reference_answers=ref_answers,
        current_answers=cur_answers,
        embedder=embedder,
        reference_key=f"drift-reference:{version.id}:{dataset.id}",
    )
    report.version, report.dataset = version.name, dataset.id
    return report


def mmd_test(
    x: np.ndarray, y: np.ndarray, permutations: int, rng: np.random.Generator
) -> tuple[float, float]:
    """Unbiased squared MMD with an RBF kernel (median-distance bandwidth) and its permutation p-value."""
    pooled = np.concatenate([x, y]).astype(np.float64)
    sq = np.maximum((pooled**2).sum(1)[:, None] + (pooled**2).sum(1)[None, :] - 2 * pooled @ pooled.T, 0)
    upper = sq[np.triu_indices_from(sq, k=1)]
    bandwidth = float(np.median(upper)) or 1.0
    kernel = np.exp(-sq / bandwidth)
    n = len(x)

    def statistic(index: np.ndarray) -> float:
        a, b = index[:n], index[n:]
        kxx, kyy, kxy = kernel[np.ix_(a, a)], kernel[np.ix_(b, b)], kernel[np.ix_(a, b)]
        m, k = len(a), len(b)
        return float(
            (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
            + (kyy.sum() - np.trace(kyy)) / (k * (k - 1))
            - 2 * kxy.mean()
        )

    observed = statistic(np.arange(len(pooled)))
    exceed = sum(statistic(rng.permutation(len(pooled))) >= observed for _ in range(permutations))
    return observed, (exceed + 1) / (permutations + 1)


def classifier_auc(x: np.ndarray, y: np.ndarray, seed: int = 0) -> tuple[float, np.ndarray]:
    """Cross-validated ROC AUC of a logistic regression separating y from x; y's out-of-fold scores."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    features = np.concatenate([x, y])
    labels = np.r_[np.zeros(len(x)), np.ones(len(y))]
    folds = StratifiedKFold(n_splits=min(5, len(y), len(x)), shuffle=True, random_state=seed)
    model = LogisticRegression(max_iter=1000, class_weight="balanced")
    scores = cross_val_predict(model, features, labels, cv=folds, method="predict_proba")[:, 1]
    return float(roc_auc_score(labels, scores)), scores[len(x) :]


def _non_latin(text: str) -> float:
    letters = [c for c in text if c.isalpha()]
    return sum(1 for c in letters if not ("a" <= c.lower() <= "z" or "\u00c0" <= c <= "\u024f")) / max(
        len(letters), 1
    )


DESCRIPTORS = {
    "length": lambda t: float(len(t.split())),
    "non_latin_letters": _non_latin,
    "digits": lambda t: sum(c.isdigit() for c in t) / max(len(t), 1),
}


def describe(texts: list[str], fn: Any) -> list[float]:
    return [float(fn(t)) for t in texts]


def population_stability(
    reference: list[float], current: list[float], *, binary: bool = False, bins: int = 10
) -> float:
    """PSI: sum over bins of (current share - reference share) * ln(current share / reference share).

    Bins are the reference's deciles (two bins for a yes/no descriptor); 0.1 is a small shift,
    0.25 a large one by the usual rule of thumb.
    """
    ref, cur = np.asarray(reference, dtype=float), np.asarray(current, dtype=float)
    if binary:
        edges = np.array([-np.inf, 0.5, np.inf])
    else:
        edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)))
        edges[0], edges[-1] = -np.inf, np.inf
        if len(edges) < 3:
            edges = np.array([-np.inf, float(edges[1]) if len(edges) > 1 else 0.0, np.inf])
    p = np.histogram(ref, edges)[0] / len(ref)
    q = np.histogram(cur, edges)[0] / len(cur)
    p, q = np.clip(p, 1e-4, None), np.clip(q, 1e-4, None)
    return float(((q - p) * np.log(q / p)).sum())


def distinctive_words(
    reference: list[str], current: list[str], top: int = 10
) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """Words most over-represented in current and in reference: z-scores of the log-odds ratio."""
    tokenize = lambda text: re.findall(r"[^\W\d_]{2,}", text.lower())  # noqa: E731
    a, b = (
        Counter(w for t in current for w in tokenize(t)),
        Counter(w for t in reference for w in tokenize(t)),
    )
    prior = a + b
    alpha0 = sum(prior.values()) or 1
    na, nb = sum(a.values()), sum(b.values())
    scores = {}
    for word, count in prior.items():
        if count < 3:
            continue
        alpha = count / alpha0 * 1000  # an informative prior worth 1,000 words
        la = np.log((a[word] + alpha) / (na + 1000 - a[word] - alpha))
        lb = np.log((b[word] + alpha) / (nb + 1000 - b[word] - alpha))
        variance = 1 / (a[word] + alpha) + 1 / (b[word] + alpha)
        scores[word] = float((la - lb) / np.sqrt(variance))
    ranked = sorted(scores.items(), key=lambda kv: kv[1])
    return [(w, round(s, 2)) for w, s in reversed(ranked[-top:]) if s > 0], [
        (w, round(-s, 2)) for w, s in ranked[:top] if s < 0
    ]


def drift_clusters(
    reference_prompts: list[str],
    current_prompts: list[str],
    *,
    clusters: int = 6,
    embedder: Any = None,
    seed: int = 0,
) -> tuple[list[int], list[float]]:
    """Group recent prompts (k-means on MiniLM embeddings) and say how unlike the training data each group is.

    Returns each prompt's cluster and, per cluster, the mean similarity of its prompts to their
    nearest training prompt: the lowest is the drifted cluster, the one to learn from first.
    """
    from sklearn.cluster import KMeans

    if embedder is None:
        from tunesmith.models.embed import Embedder

        embedder = Embedder()
    rng = np.random.default_rng(seed)
    if len(reference_prompts) > MAX_REFERENCE:
        reference_prompts = [
            reference_prompts[i] for i in rng.choice(len(reference_prompts), MAX_REFERENCE, replace=False)
        ]
    ref = embedder.encode(reference_prompts)
    cur = embedder.encode(current_prompts)
    k = max(1, min(clusters, len(current_prompts) // 3))
    labels = (
        KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(cur)
        if k > 1
        else np.zeros(len(cur), int)
    )
    nearest = (cur @ ref.T).max(axis=1)
    similarity = [float(nearest[labels == c].mean()) for c in range(k)]
    return [int(c) for c in labels], similarity
