"""Processing job: AutoML search over classical text models (SageMaker Autopilot's analogue).

Runs unchanged in a SageMaker processing container or under the local runner.

``search`` (the default) reads the feature store's splits (``review_body``, ``label_id`` and
``star_rating`` columns of ``<split>/*.parquet`` under ``--train-data`` / ``--validation-data`` /
``--test-data``) and tries candidates - TF-IDF word and word+character n-grams with logistic
regression (3 sentiments, or the 5 star ratings decoded as an ordinal score), a linear SVM,
complement naive Bayes and gradient boosting over an SVD of the TF-IDF - first each family's
default, then a random hyper-parameter search, until ``--time-budget-s`` is spent. A candidate
is cross-validated on the training split (``--cv-folds``): its decoding (a per-class bias, i.e.
prior correction, or ordinal thresholds) is tuned on the out-of-fold scores for class-balanced
accuracy - the validation and test splits are balanced, the training split is not - and it is
ranked by that accuracy with the tuning cross-fitted (tuned on one half, scored on the other).
It is then fitted on every training row; validation and test accuracy are reported, never used
to choose (354 validation reviews rank candidates with +-2.5 points of noise; the out-of-fold
scores of ~21,000 training reviews with +-0.6). One progress line per candidate.

Writes to ``--output-data``: ``leaderboard.json``, ``leaderboard.html`` (table + chart),
``evaluation.json`` (the best candidate on the test split, SageMaker's model-quality format); to
``--model-output``: the best candidate's ``model.joblib`` + ``config.json`` (served by
``automl_inference.py``).

``score`` evaluates a baseline package (``model.tar.gz`` or its folder) on a test split and
writes ``evaluation.json`` (the champion/challenger check uses it).

Exit code 2 = bad input (no rows, missing columns, one class), as the other jobs.
"""
from __future__ import annotations

import base64
import io
import logging
import math
import random
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from automl_inference import MODEL_FILE, BaselineModel, class_scores, decode, model_fn, predict_labels
from common import ID2LABEL, parse_dataclass, render_html, write_json_atomic, write_text_atomic

log = logging.getLogger("automl")
PROC = "/opt/ml/processing"
FAMILIES = ("logreg", "logreg_stars", "linear_svm", "complement_nb", "gradient_boosting")
# Fit seconds per 1,000 training reviews on a busy 2-core machine (word+char TF-IDF, load ~7): the
# budget guard's estimate for a kind not fitted yet in this run, scaled by how much faster or slower
# the kinds fitted so far ran than their own estimates (afterwards the kind's last time is used).
PRIOR_FIT_S_PER_1K = {"logreg": 1.0, "logreg_stars": 1.5, "linear_svm": 0.2, "complement_nb": 0.01,
                      "gradient_boosting": 4.0}
VECTORIZER_S_PER_1K = {"word": 0.5, "word_char": 1.5}
VECTORIZERS = ("word", "word_char")
# Stacking: members within this much cross-validated accuracy of the best candidate; the
# meta-model's strength; the share of the budget kept for it (it refits no member).
STACK_MARGIN = 0.05
STACK_META_C = 1.0
STACK_RESERVE = 0.1
OUTPUT_RESERVE = 0.05  # of the budget (at most 15 s) kept for writing the outputs


class AutoMLInputError(ValueError):
    """Input the search cannot use (exit code 2: a retry cannot fix it)."""


class OverBudget(Exception):
    """A candidate's folds so far say it would end after the budget: it is dropped."""

    def __init__(self, projected_s: float, done: int) -> None:
        super().__init__(f"projected {projected_s:.0f}s after {done} fold(s)")
        self.projected_s = projected_s
        self.done = done


@dataclass
class Candidate:
    """One point of the search space: a vectorizer and an estimator with its hyper-parameters."""

    family: str
    vectorizer: str
    params: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        hp = ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(self.params.items()))
        return f"{self.family}[{self.vectorizer}]({hp})"


# ------------------------------------------------------------------ data


def load_split(folder: Path, name: str, need_rating: bool = False) -> pd.DataFrame:
    """``review_body``, ``label_id`` (and ``star_rating``) of a split's Parquet shards."""
    files = sorted(Path(folder).rglob("*.parquet"))
    if not files:
        raise AutoMLInputError(f"{folder}: no {name} shards (*.parquet) - pass the feature store's {name} split")
    cols = ["review_body", "label_id"] + (["star_rating"] if need_rating else [])
    try:
        df = pd.concat([pd.read_parquet(f, columns=cols) for f in files], ignore_index=True)
    except (KeyError, ValueError) as exc:
        raise AutoMLInputError(f"{folder}: the {name} split lacks a column of {cols} ({exc})") from None
    df = df.dropna(subset=["review_body", "label_id"])
    if df.empty:
        raise AutoMLInputError(f"{folder}: the {name} split has no rows")
    bad = sorted(set(df["label_id"].astype(int)) - set(ID2LABEL))
    if bad:
        raise AutoMLInputError(f"{folder}: label_id values {bad} in the {name} split; expected {sorted(ID2LABEL)}")
    return df.reset_index(drop=True)


# ------------------------------------------------------------------ search space


def default_candidates() -> list[Candidate]:
    """Each family's default, cheapest and most promising first (what runs before the random search).

    The strengths are where 4-fold cross-validation on the shipped reviews peaked (balanced
    accuracy with the tuned class bias): the linear SVM at C~0.05 on word+char n-grams, logistic
    regression at C~0.3 there (C>=2 over-fits the 2,000-review minority classes)."""
    return [
        Candidate("linear_svm", "word_char", {"C": 0.05}),
        Candidate("complement_nb", "word", {"alpha": 0.3}),
        Candidate("logreg", "word_char", {"C": 0.3}),
        Candidate("linear_svm", "word", {"C": 0.1}),
        Candidate("logreg", "word", {"C": 0.5}),
        Candidate("logreg_stars", "word_char", {"C": 0.5}),
        Candidate("gradient_boosting", "word", {"svd": 150, "learning_rate": 0.1, "max_iter": 200}),
    ]


def sample_candidate(rng: random.Random) -> Candidate:
    """A random point of the search space (log-uniform regularisation strengths)."""
    family = rng.choice(FAMILIES)
    vec = rng.choice(VECTORIZERS)
    if family == "logreg":
        return Candidate(family, vec, {"C": round(math.exp(rng.uniform(math.log(0.1), math.log(4))), 3)})
    if family == "logreg_stars":
        return Candidate(family, vec, {"C": round(math.exp(rng.uniform(math.log(0.2), math.log(2))), 3)})
    if family == "linear_svm":
        return Candidate(family, vec, {"C": round(math.exp(rng.uniform(math.log(0.01), math.log(0.3))), 4)})
    if family == "complement_nb":
        return Candidate(family, "word", {"alpha": round(math.exp(rng.uniform(math.log(0.03), math.log(1.5))), 3)})
    return Candidate(family, "word", {"svd": rng.choice([100, 150, 250]),
                                      "learning_rate": rng.choice([0.05, 0.1, 0.2]),
                                      "max_iter": rng.choice([150, 300])})


def make_vectorizer(kind: str, n_rows: int) -> Any:
    """TF-IDF word 1-2 grams, or word 1-2 grams + character 2-5 grams (within word boundaries)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import FeatureUnion

    min_df = 2 if n_rows >= 200 else 1  # tiny training sets would lose their whole vocabulary
    word = TfidfVectorizer(ngram_range=(1, 2), min_df=min_df, sublinear_tf=True, max_features=200_000)
    if kind == "word":
        return word
    char = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), min_df=min_df + 1, sublinear_tf=True,
                           max_features=300_000)
    return FeatureUnion([("word", word), ("char", char)])


def make_estimator(c: Candidate, seed: int) -> list[tuple[str, Any]]:
    """The pipeline steps after the vectorizer."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.naive_bayes import ComplementNB
    from sklearn.svm import LinearSVC

    p = c.params
    if c.family in ("logreg", "logreg_stars"):
        # tol 1e-3: 3x faster fits than the default 1e-4 here, same accuracy to the third decimal
        return [("model", LogisticRegression(C=p["C"], class_weight="balanced", max_iter=2000, tol=1e-3,
                                             random_state=seed))]
    if c.family == "linear_svm":
        return [("model", LinearSVC(C=p["C"], class_weight="balanced", random_state=seed))]
    if c.family == "complement_nb":
        return [("model", ComplementNB(alpha=p["alpha"]))]
    if c.family == "gradient_boosting":
        return [("svd", TruncatedSVD(n_components=p["svd"], random_state=seed)),
                ("model", HistGradientBoostingClassifier(learning_rate=p["learning_rate"], max_iter=p["max_iter"],
                                                         class_weight="balanced", random_state=seed))]
    raise AutoMLInputError(f"unknown model family {c.family!r}; choose from {', '.join(FAMILIES)}")


# ------------------------------------------------------------------ decoding tuned out of fold


def balanced_weights(y: np.ndarray) -> np.ndarray:
    """Row weights that give every class the same total: weighted accuracy = balanced accuracy,
    i.e. the accuracy expected on a class-balanced test split (the pipeline's validation / test)."""
    values, counts = np.unique(y, return_counts=True)
    per_class = dict(zip(values.tolist(), (1.0 / counts).tolist()))
    return np.asarray([per_class[v] for v in y.tolist()])


def weighted_accuracy(pred: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    """Share of the weight on correct predictions."""
    return float((w * (pred == y)).sum() / w.sum())


def tune_decoder(scores: np.ndarray, y: np.ndarray, family: str, classes: np.ndarray,
                 weights: np.ndarray | None = None) -> dict:
    """The decoder (see automl_inference.decode) with the best (weighted) accuracy on these rows:
    a per-class log-score bias (prior correction) or, for the star-rating model, two thresholds
    on the expected rating."""
    w = np.ones(len(y)) if weights is None else weights
    if family == "logreg_stars":
        stars = [float(s) for s in classes]
        expected = scores @ np.asarray(stars)
        best = (-1.0, [2.5, 3.5])
        for a in np.arange(1.5, 4.0, 0.05):
            for b in np.arange(a + 0.1, 4.8, 0.05):
                acc = weighted_accuracy(np.digitize(expected, [a, b]), y, w)
                if acc > best[0]:
                    best = (acc, [round(float(a), 3), round(float(b), 3)])
        return {"kind": "ordinal", "stars": stars, "thresholds": best[1]}
    full = np.full((len(scores), len(ID2LABEL)), 1e-12)
    full[:, classes.astype(int)] = scores  # a class missing from train gets ~0 probability
    logp = np.log(np.clip(full, 1e-12, None))
    grid = np.round(np.arange(-1.5, 1.51, 0.1), 2)
    best_acc, best_bias = weighted_accuracy(logp.argmax(1), y, w), [0.0, 0.0, 0.0]
    for b0 in grid:
        shifted = logp + [b0, 0.0, 0.0]
        for b1 in grid:
            shifted[:, 1] = logp[:, 1] + b1
            acc = weighted_accuracy(shifted.argmax(1), y, w)
            if acc > best_acc + 1e-9:  # only a real gain moves the bias off zero
                best_acc, best_bias = acc, [float(b0), float(b1), 0.0]
    return {"kind": "argmax", "bias": best_bias, "columns": [int(c) for c in classes]}


def cross_fitted_accuracy(scores: np.ndarray, y: np.ndarray, family: str, classes: np.ndarray, seed: int,
                          weights: np.ndarray | None = None) -> float:
    """(Weighted) accuracy of the decoder tuned on one half of the rows and scored on the other
    (both ways): the tuning cannot flatter itself, so candidates are ranked on accuracy they would
    get on unseen rows."""
    w = np.ones(len(y)) if weights is None else weights
    order = np.random.default_rng(seed).permutation(len(y))
    halves = (order[: len(y) // 2], order[len(y) // 2:])
    correct = 0.0
    for tune, held in (halves, halves[::-1]):
        if len(tune) == 0 or len(held) == 0:
            continue
        decoder = tune_decoder(scores[tune], y[tune], family, classes, w[tune])
        pred, _ = decode(scores[held], decoder)
        correct += float((w[held] * (pred == y[held])).sum())
    return correct / float(w.sum())


def macro_f1(y: np.ndarray, p: np.ndarray) -> float:
    """Macro-F1 over the three sentiments."""
    from sklearn.metrics import f1_score

    return float(f1_score(y, p, average="macro", labels=sorted(ID2LABEL), zero_division=0))


# ------------------------------------------------------------------ the search


def fit_head(c: Candidate, x: Any, target: np.ndarray, seed: int) -> Any:
    """The estimator (after the vectorizer) of ``c`` fitted on the feature matrix ``x``."""
    from sklearn.pipeline import Pipeline

    steps = make_estimator(c, seed)
    head = Pipeline(steps) if len(steps) > 1 else steps[0][1]
    return head.fit(x, target)


def stack_method(head: Any) -> str:
    """The output a stacking ensemble feeds its meta-model (scikit-learn's ``stack_method="auto"``):
    ``predict_proba`` where the estimator has it, else ``decision_function``."""
    return "predict_proba" if hasattr(head, "predict_proba") else "decision_function"


def stack_output(head: Any, x: Any) -> tuple[np.ndarray, str]:
    """(``stack_method``'s output on ``x``, the method's name)."""
    method = stack_method(head)
    return np.asarray(getattr(head, method)(x), dtype=float), method


def out_of_fold_scores(c: Candidate, x: Any, target: np.ndarray, strata: np.ndarray, classes: np.ndarray,
                       folds: int, seed: int, deadline: float = math.inf) -> tuple[np.ndarray, np.ndarray | None]:
    """(class scores, raw stacking outputs) of every training row from the fold model that did not
    see it. Score columns = ``classes``; a class absent from a fold's training part gets ~0 there
    and the raw outputs are then None (they would not line up with the full model's). Raises
    :class:`OverBudget` after a fold when the remaining folds and the final fit, at the pace so far,
    would end after ``deadline`` (``time.monotonic()`` seconds)."""
    from sklearn.model_selection import StratifiedKFold

    t0 = time.monotonic()
    scores = np.full((x.shape[0], len(classes)), 1e-12)
    raw: np.ndarray | None = None
    complete = True
    done = 0
    for fit_idx, held_idx in StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(strata)),
                                                                                           strata):
        head = fit_head(c, x[fit_idx], target[fit_idx], seed)
        cols = np.searchsorted(classes, np.asarray(head.classes_))
        fold_raw, _ = stack_output(head, x[held_idx])
        scores[np.ix_(held_idx, cols)] = class_scores(head, x[held_idx])
        complete = complete and len(cols) == len(classes) and fold_raw.ndim == 2
        if complete:
            raw = np.zeros((x.shape[0], fold_raw.shape[1])) if raw is None else raw
            raw[held_idx] = fold_raw
        done += 1
        per_fold = (time.monotonic() - t0) / done
        if done < folds and time.monotonic() + per_fold * (folds - done + 1) > deadline:
            raise OverBudget(per_fold * (folds + 1), done)
    return scores, (raw if complete else None)


def evaluate_candidate(c: Candidate, feats: dict, data: dict, seed: int, folds: int,
                       deadline: float = math.inf) -> dict:
    """Cross-validate ``c`` on the training split (tuning its decoder out of fold), then fit it on
    every training row and score the held-out validation and test splits with that decoder."""
    from sklearn.pipeline import Pipeline

    vec, xs = feats[c.vectorizer]
    y = data["train"]["label_id"].to_numpy().astype(int)
    target = data["train"]["star_rating"].to_numpy().astype(int) if c.family == "logreg_stars" else y
    if len(set(target)) < 2:
        raise AutoMLInputError(f"{c.name}: the training split holds one class only")
    classes = np.unique(target)
    w = balanced_weights(y)
    t0 = time.monotonic()
    oof, oof_raw = out_of_fold_scores(c, xs["train"], target, y, classes, folds, seed, deadline)
    cv_s = time.monotonic() - t0
    decoder = tune_decoder(oof, y, c.family, classes, w)  # the saved model's: tuned on every out-of-fold score
    cv_acc = cross_fitted_accuracy(oof, y, c.family, classes, seed, w)
    t1 = time.monotonic()
    head = fit_head(c, xs["train"], target, seed)
    fit_s = time.monotonic() - t1  # the vectorizer's fit is reported apart
    steps = list(head.steps) if isinstance(head, Pipeline) else [("model", head)]
    model = BaselineModel(Pipeline([("features", vec), *steps]), dict(ID2LABEL), decoder)
    yv = data["validation"]["label_id"].to_numpy().astype(int)
    pred_val, _ = decode(class_scores(head, xs["validation"]), decoder)
    texts = data["test"]["review_body"].tolist()
    t2 = time.monotonic()
    pred_test, _ = predict_labels(model, texts)  # end to end from raw text: what serving costs
    infer_s = time.monotonic() - t2
    yt = data["test"]["label_id"].to_numpy().astype(int)
    return {"candidate": c.name, "family": c.family, "vectorizer": c.vectorizer, "hyperparameters": c.params,
            "cv_accuracy": round(cv_acc, 4),
            "validation_accuracy": round(float((pred_val == yv).mean()), 4),
            "test_accuracy": round(float((pred_test == yt).mean()), 4),
            "test_macro_f1": round(macro_f1(yt, pred_test), 4),
            "train_s": round(fit_s, 2), "cv_s": round(cv_s, 2),
            "vectorizer_fit_s": round(feats["_fit_s"][c.vectorizer], 2),
            "inference_s_per_1000": round(1000 * infer_s / max(1, len(texts)), 3),
            "decoder": decoder, "_model": model, "_oof_raw": oof_raw,
            "_stack_method": stack_method(head)}


def fit_vectorizer(kind: str, data: dict) -> tuple[Any, dict, float]:
    """Fit a vectorizer on the training text once (unsupervised: every fold of every candidate
    shares it); the matrices of every split."""
    vec = make_vectorizer(kind, len(data["train"]))
    t0 = time.monotonic()
    try:
        xs = {"train": vec.fit_transform(data["train"]["review_body"]).tocsr()}
    except ValueError as exc:  # "empty vocabulary"
        raise AutoMLInputError(f"vectorizer {kind}: {exc}") from None
    fit_s = time.monotonic() - t0
    for split in ("validation", "test"):
        xs[split] = vec.transform(data[split]["review_body"]).tocsr()
    return vec, xs, fit_s


def cv_folds_for(y: np.ndarray, folds: int) -> int:
    """``folds``, lowered to the smallest class's row count (each fold needs every class); at least 2."""
    smallest = int(np.unique(y, return_counts=True)[1].min())
    if smallest < 2:
        raise AutoMLInputError(f"the training split has {smallest} row(s) of a sentiment; cross-validation "
                               "needs at least 2 per class")
    return max(2, min(folds, smallest))


def stacked_candidate(rows: list[dict], data: dict, seed: int, max_members: int, log_fn=print) -> dict | None:
    """An extra candidate: the best candidate of each (family, vectorizer) kind, up to ``max_members``
    within ``STACK_MARGIN`` of the best, stacked under a logistic regression fitted on their
    out-of-fold outputs (no member refit: their full-training-split fits are reused). Ranked like
    the others: its decoder is tuned on the meta-model's own out-of-fold scores. None when fewer
    than two members qualify or the training split lacks a sentiment."""
    from sklearn.ensemble import StackingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    y = data["train"]["label_id"].to_numpy().astype(int)
    if max_members < 2 or len(np.unique(y)) < len(ID2LABEL):
        return None
    best_cv = max(r["cv_accuracy"] for r in rows)
    members: list[dict] = []
    for r in sorted(rows, key=lambda r: -r["cv_accuracy"]):
        kind = (r["family"], r["vectorizer"])
        if r["_oof_raw"] is None or r["cv_accuracy"] < best_cv - STACK_MARGIN \
                or kind in {(m["family"], m["vectorizer"]) for m in members}:
            continue
        members.append(r)
        if len(members) == max_members:
            break
    if len(members) < 2:
        return None
    classes = np.asarray(sorted(ID2LABEL))
    w = balanced_weights(y)
    z = np.hstack([m["_oof_raw"] for m in members])
    meta = LogisticRegression(C=STACK_META_C, class_weight="balanced", max_iter=2000, tol=1e-3, random_state=seed)
    t0 = time.monotonic()
    meta_oof = cross_val_predict(meta, z, y, method="predict_proba",
                                 cv=StratifiedKFold(cv_folds_for(y, 5), shuffle=True, random_state=seed))
    cv_s = time.monotonic() - t0
    decoder = tune_decoder(meta_oof, y, "stacking", classes, w)
    cv_acc = cross_fitted_accuracy(meta_oof, y, "stacking", classes, seed, w)
    t1 = time.monotonic()
    meta.fit(z, y)
    # cv="prefit" wraps the fitted members; its fit only computes their outputs on a few rows to fit a
    # throwaway final estimator, replaced by the meta-model fitted on the out-of-fold outputs above.
    few = data["train"].groupby("label_id", group_keys=False).head(20)
    stack = StackingClassifier([(f"m{i}", m["_model"].pipeline) for i, m in enumerate(members)],
                               final_estimator=LogisticRegression(max_iter=200), cv="prefit")
    stack.fit(few["review_body"].tolist(), few["label_id"].to_numpy().astype(int))
    if list(stack.stack_method_) != [m["_stack_method"] for m in members] \
            or list(stack.classes_) != list(meta.classes_):
        log_fn(f"[automl] stacking skipped: its members' outputs ({stack.stack_method_}) differ from the "
               "out-of-fold ones")
        return None
    stack.final_estimator_ = meta
    fit_s = time.monotonic() - t1
    model = BaselineModel(stack, dict(ID2LABEL), decoder)
    yv = data["validation"]["label_id"].to_numpy().astype(int)
    pred_val, _ = predict_labels(model, data["validation"]["review_body"].tolist())
    texts = data["test"]["review_body"].tolist()
    t2 = time.monotonic()
    pred_test, _ = predict_labels(model, texts)
    infer_s = time.monotonic() - t2
    yt = data["test"]["label_id"].to_numpy().astype(int)
    names = [m["candidate"] for m in members]
    return {"candidate": f"stacking[{' + '.join(names)}]", "family": "stacking", "vectorizer": "mixed",
            "hyperparameters": {"members": names, "meta": f"logistic regression C={STACK_META_C:g}, balanced"},
            "cv_accuracy": round(cv_acc, 4),
            "validation_accuracy": round(float((pred_val == yv).mean()), 4),
            "test_accuracy": round(float((pred_test == yt).mean()), 4),
            "test_macro_f1": round(macro_f1(yt, pred_test), 4),
            "train_s": round(fit_s, 2), "cv_s": round(cv_s, 2), "vectorizer_fit_s": 0.0,
            "inference_s_per_1000": round(1000 * infer_s / max(1, len(texts)), 3),
            "decoder": decoder, "_model": model, "_oof_raw": None, "_stack_method": "predict_proba"}


def search(data: dict, time_budget_s: float, max_candidates: int, seed: int, families: tuple[str, ...] = FAMILIES,
           log_fn=print, folds: int = 3, stack_members: int = 5) -> tuple[list[dict], dict]:
    """Run the search, then stack the best kinds as one more candidate; (leaderboard rows best
    first, the best row incl. its ``_model``)."""
    rng = random.Random(seed)
    start = time.monotonic()
    total_budget_s = time_budget_s
    if stack_members >= 2:
        time_budget_s = time_budget_s * (1 - STACK_RESERVE)
    folds = cv_folds_for(data["train"]["label_id"].to_numpy().astype(int), folds)
    feats: dict = {"_fit_s": {}}
    cost: dict[tuple[str, str], float] = {}  # last seconds (folds + final fit) per (family, vectorizer)
    prior: dict[tuple[str, str], float] = {}  # what PRIOR_FIT_S_PER_1K expected for them
    queue = [c for c in default_candidates() if c.family in families]
    seen: set[str] = set()
    skipped: set[tuple[str, str]] = set()
    rows: list[dict] = []
    tries = 0
    while len(rows) < max_candidates and tries < max_candidates * 20:
        tries += 1
        c = queue.pop(0) if queue else sample_candidate(rng)
        if c.family not in families or c.name in seen:
            continue
        seen.add(c.name)
        elapsed = time.monotonic() - start
        k_rows = len(data["train"]) / 1000
        # folds fits on (folds-1)/folds of the rows + one on all of them ~ folds fits' time
        # never below 1: the priors are per family and a fast family says little about a slow one
        speed = max(1.0, float(np.median([cost[k] / prior[k] for k in cost]))) if cost else 1.0
        expected = cost.get((c.family, c.vectorizer), PRIOR_FIT_S_PER_1K[c.family] * k_rows * folds * speed) \
            + (0 if c.vectorizer in feats else VECTORIZER_S_PER_1K[c.vectorizer] * k_rows)
        if elapsed + expected > time_budget_s:
            if (c.family, c.vectorizer) not in skipped:  # once per kind: random draws repeat them
                skipped.add((c.family, c.vectorizer))
                log_fn(f"[automl] {c.name} skipped: expected {expected:.0f}s, {time_budget_s - elapsed:.0f}s left")
            if not queue and all(elapsed + v > time_budget_s for v in cost.values()):
                log_fn(f"[automl] time budget {time_budget_s:.0f}s reached after {elapsed:.0f}s: stopping")
                break
            continue
        if c.vectorizer not in feats:
            vec, xs, fit_s = fit_vectorizer(c.vectorizer, data)
            feats[c.vectorizer], feats["_fit_s"][c.vectorizer] = (vec, xs), fit_s
            log_fn(f"[automl] vectorizer {c.vectorizer}: {xs['train'].shape[1]} features in {fit_s:.1f}s")
        try:
            row = evaluate_candidate(c, feats, data, seed, folds, deadline=start + time_budget_s)
        except AutoMLInputError:
            raise
        except OverBudget as exc:  # its kind is priced at that pace from now on
            cost[(c.family, c.vectorizer)] = exc.projected_s
            prior[(c.family, c.vectorizer)] = PRIOR_FIT_S_PER_1K[c.family] * k_rows * folds
            log_fn(f"[automl] candidate {c.name} stopped: {exc}, {time_budget_s - (time.monotonic() - start):.0f}s "
                   "left")
            continue
        except (ValueError, np.linalg.LinAlgError) as exc:  # a candidate that cannot fit this data is skipped
            log_fn(f"[automl] candidate {c.name} skipped: {type(exc).__name__}: {exc}")
            continue
        cost[(c.family, c.vectorizer)] = max(row["cv_s"] + row["train_s"], 0.01)
        prior[(c.family, c.vectorizer)] = PRIOR_FIT_S_PER_1K[c.family] * k_rows * folds
        rows.append(row)
        log_fn(f"[automl] candidate {len(rows)}: {c.name}: cv acc {row['cv_accuracy']:.4f}, validation acc "
               f"{row['validation_accuracy']:.4f}, test acc {row['test_accuracy']:.4f}, {folds}-fold cv "
               f"{row['cv_s']:.1f}s + fit {row['train_s']:.1f}s, {row['inference_s_per_1000']:.2f}s/1000 reviews "
               f"(elapsed {time.monotonic() - start:.0f}s of {time_budget_s:.0f}s)")
    if not rows:
        raise AutoMLInputError(f"no candidate could be fitted within {time_budget_s:.0f}s; raise time_budget_s")
    stacked = stacked_candidate(rows, data, seed, stack_members, log_fn) if len(rows) >= 2 else None
    if stacked is not None:
        rows.append(stacked)
        log_fn(f"[automl] candidate {len(rows)}: {stacked['candidate']}: cv acc {stacked['cv_accuracy']:.4f}, "
               f"validation acc {stacked['validation_accuracy']:.4f}, test acc {stacked['test_accuracy']:.4f}, "
               f"meta-model cv {stacked['cv_s']:.1f}s + fit {stacked['train_s']:.1f}s, "
               f"{stacked['inference_s_per_1000']:.2f}s/1000 reviews (elapsed {time.monotonic() - start:.0f}s "
               f"of {total_budget_s:.0f}s)")
    # Ranked by cross-validated accuracy on the training split; the faster candidate wins a tie.
    # Validation and test accuracy never choose.
    rows.sort(key=lambda r: (-r["cv_accuracy"], r["train_s"] + r["inference_s_per_1000"]))
    for rank, r in enumerate(rows, start=1):
        r["rank"] = rank
    return rows, rows[0]


# ------------------------------------------------------------------ outputs


def public(row: dict) -> dict:
    """A leaderboard row without the fitted model."""
    return {k: v for k, v in row.items() if not k.startswith("_")}


def chart_png(rows: list[dict]) -> bytes:
    """Bar chart: cross-validated, validation and test accuracy per candidate (best first)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"#{r['rank']} {r['family']}[{r['vectorizer']}]" for r in rows]
    y = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.5))
    ax.barh(y - 0.27, [r["cv_accuracy"] for r in rows], 0.27, label="cross-validation (ranks)")
    ax.barh(y, [r["validation_accuracy"] for r in rows], 0.27, label="validation")
    ax.barh(y + 0.27, [r["test_accuracy"] for r in rows], 0.27, label="test")
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    ax.axvline(1 / 3, color="grey", linestyle=":", label="chance")
    ax.set_xlabel("accuracy (3 sentiments)")
    ax.set_xlim(0, 1)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def leaderboard_html(board: dict) -> str:
    """A self-contained page (``templates/leaderboard.html.j2``): summary, chart, table."""
    rows = board["leaderboard"]
    png = base64.b64encode(chart_png(rows)).decode()
    cols = ("rank", "candidate", "cv_accuracy", "validation_accuracy", "test_accuracy", "test_macro_f1", "cv_s",
            "train_s", "inference_s_per_1000")
    return render_html("leaderboard.html.j2", board=board, rows=rows, cols=cols, png=png)


def evaluation_report(y: np.ndarray, pred: np.ndarray, extra: dict) -> dict:
    """``evaluation.json`` in the shape of evaluate.py (SageMaker model-quality)."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    labels = sorted(ID2LABEL)
    acc = float((pred == y).mean())
    prec, rec, f1, sup = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    per_class = {ID2LABEL[i]: {"precision": float(prec[i]), "recall": float(rec[i]), "f1": float(f1[i]),
                               "support": int(sup[i])} for i in labels}
    return {"metrics": {"accuracy": {"value": acc}, "macro_f1": {"value": macro_f1(y, pred)}},
            "per_class": per_class, "confusion_matrix": confusion_matrix(y, pred, labels=labels).tolist(),
            "test_rows": int(len(y)), **extra}


def save_model(row: dict, dest: Path) -> None:
    """``model.joblib`` + ``config.json`` of the best candidate (written to temp names, then renamed)."""
    import joblib

    dest.mkdir(parents=True, exist_ok=True)
    tmp = dest / f".{MODEL_FILE}.tmp"
    joblib.dump(row["_model"].pipeline, tmp)
    tmp.replace(dest / MODEL_FILE)
    config = {"model_type": "sklearn", "framework": "scikit-learn", "id2label": {str(k): v for k, v in ID2LABEL.items()},
              "label2id": {v: k for k, v in ID2LABEL.items()}, "decoder": row["decoder"],
              "candidate": row["candidate"], "family": row["family"], "hyperparameters": row["hyperparameters"]}
    write_json_atomic(dest / "config.json", config)


# ------------------------------------------------------------------ entry points


@dataclass
class AutoMLArguments:
    """Arguments (the mode, ``search`` or ``score``, may come first as a word); defaults follow the
    processing-container layout."""

    mode: str = field(default="search", metadata={"help": "search or score"})
    train_data: str = field(default=f"{PROC}/input/train", metadata={"help": "train split shards"})
    validation_data: str = field(default=f"{PROC}/input/validation", metadata={"help": "validation split shards"})
    test_data: str = field(default=f"{PROC}/input/test", metadata={"help": "test split shards"})
    model: str = field(default=f"{PROC}/input/model", metadata={"help": "score: folder with the baseline's model.tar.gz"})
    output_data: str = field(default=f"{PROC}/output/automl", metadata={"help": "leaderboard / evaluation.json"})
    model_output: str = field(default=f"{PROC}/output/model", metadata={"help": "search: the best candidate's folder"})
    time_budget_s: float = field(default=600, metadata={"help": "search time budget in seconds (>= 10)"})
    max_candidates: int = field(default=20, metadata={"help": "most candidates tried (>= 1)"})
    families: str = field(default=",".join(FAMILIES), metadata={"help": f"comma list of {', '.join(FAMILIES)}"})
    cv_folds: int = field(default=3, metadata={
        "help": "cross-validation folds on the training split that rank the candidates (>= 2)"})
    stack_members: int = field(default=5, metadata={
        "help": "most members of the stacked candidate added after the search (0 = none)"})
    seed: int = field(default=42, metadata={"help": "seed for sampling, folds and candidates"})

    def __post_init__(self) -> None:
        if self.mode not in ("search", "score"):
            raise ValueError(f"mode {self.mode!r}: use search or score")
        if self.time_budget_s < 10:
            raise ValueError(f"--time-budget-s {self.time_budget_s}: must be at least 10 seconds")
        if self.max_candidates < 1:
            raise ValueError(f"--max-candidates {self.max_candidates}: must be at least 1")
        if self.cv_folds < 2:
            raise ValueError(f"--cv-folds {self.cv_folds}: must be at least 2")
        families = self.families.split(",") if isinstance(self.families, str) else self.families
        self.families = tuple(f.strip() for f in families if f.strip())
        unknown = [f for f in self.families if f not in FAMILIES]
        if unknown or not self.families:
            raise ValueError(f"--families {','.join(self.families)}: unknown {unknown}; "
                             f"choose from {', '.join(FAMILIES)}")


def parse_args(argv: list[str] | None = None) -> AutoMLArguments:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-"):  # the mode as the first word, as the requests pass it
        argv = ["--mode", *argv]
    return parse_dataclass(AutoMLArguments, argv, "AutoML search over classical text models")


def run_search(a: AutoMLArguments) -> dict:
    """The ``search`` mode: leaderboard, evaluation.json and the best model."""
    t0 = time.monotonic()
    data = {"train": load_split(Path(a.train_data), "train", need_rating="logreg_stars" in a.families),
            "validation": load_split(Path(a.validation_data), "validation"),
            "test": load_split(Path(a.test_data), "test")}
    if data["train"]["label_id"].nunique() < 2:
        raise AutoMLInputError(f"{a.train_data}: the training split holds one class only; need at least two")
    folds = cv_folds_for(data["train"]["label_id"].to_numpy().astype(int), a.cv_folds)
    log.info("rows: train %d, validation %d, test %d; budget %.0fs, at most %d candidates, families %s; "
             "candidates ranked by %d-fold cross-validation on the training split",
             *(len(data[s]) for s in ("train", "validation", "test")), a.time_budget_s, a.max_candidates,
             ",".join(a.families), folds)
    # The budget covers the whole job: what loading took and the outputs' share (saving, re-scoring
    # the best, the chart) come off the search's part.
    search_budget_s = max(1.0, a.time_budget_s - (time.monotonic() - t0) - min(15.0, OUTPUT_RESERVE * a.time_budget_s))
    rows, best = search(data, search_budget_s, a.max_candidates, a.seed, a.families, folds=folds,
                        stack_members=a.stack_members)
    out = Path(a.output_data)
    save_model(best, Path(a.model_output))
    yt = data["test"]["label_id"].to_numpy().astype(int)
    pred, _ = predict_labels(best["_model"], data["test"]["review_body"].tolist())
    report = evaluation_report(yt, pred, {"candidate": best["candidate"]})
    write_json_atomic(out / "evaluation.json", report)
    board = {"best_candidate": best["candidate"], "best_accuracy": round(report["metrics"]["accuracy"]["value"], 4),
             "best_cv_accuracy": best["cv_accuracy"], "best_validation_accuracy": best["validation_accuracy"],
             "best_macro_f1": round(report["metrics"]["macro_f1"]["value"], 4),
             "wall_s": round(time.monotonic() - t0, 1), "time_budget_s": a.time_budget_s,
             "candidates": len(rows), "cv_folds": folds,
             "rows": {s: len(data[s]) for s in ("train", "validation", "test")},
             "selection": f"{folds}-fold cross-validated class-balanced accuracy on the training split (the "
                          "class-bias decoder tuned on out-of-fold scores, cross-fitted); validation and test "
                          "held out", "leaderboard": [public(r) for r in rows]}
    write_json_atomic(out / "leaderboard.json", board)
    write_text_atomic(out / "leaderboard.html", leaderboard_html(board))
    log.info("best candidate %s: cv %.4f, validation %.4f, test %.4f (%d candidates, %.0fs)", best["candidate"],
             best["cv_accuracy"], best["validation_accuracy"], best["test_accuracy"], len(rows), board["wall_s"])
    return board


def _model_dir(folder: Path, work: Path) -> Path:
    """The baseline's folder: ``folder`` itself, or ``model.tar.gz`` under it unpacked into ``work``."""
    if (folder / MODEL_FILE).is_file():
        return folder
    archives = sorted(folder.rglob("*.tar.gz")) if folder.exists() else []
    if not archives:
        raise AutoMLInputError(f"{folder}: neither {MODEL_FILE} nor a model.tar.gz")
    with tarfile.open(archives[0]) as tar:
        tar.extractall(work, filter="data")
    if not (work / MODEL_FILE).is_file():
        raise AutoMLInputError(f"{archives[0]}: holds no {MODEL_FILE} - not an AutoML baseline package")
    return work


def run_score(a: AutoMLArguments) -> dict:
    """The ``score`` mode: the baseline package on a test split -> evaluation.json."""
    test = load_split(Path(a.test_data), "test")
    with tempfile.TemporaryDirectory() as tmp:
        model = model_fn(str(_model_dir(Path(a.model), Path(tmp))))
        t0 = time.monotonic()
        pred, _ = predict_labels(model, test["review_body"].tolist())
        seconds = time.monotonic() - t0
    y = test["label_id"].to_numpy().astype(int)
    report = evaluation_report(y, pred, {"inference_s_per_1000": round(1000 * seconds / len(y), 3)})
    write_json_atomic(Path(a.output_data) / "evaluation.json", report)
    log.info("baseline on %d test reviews: accuracy %.4f", len(y), report["metrics"]["accuracy"]["value"])
    return report


def main(argv: list[str] | None = None) -> dict:
    """Run the job in the requested mode."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout)
    a = parse_args(argv)
    return run_search(a) if a.mode == "search" else run_score(a)


if __name__ == "__main__":
    try:
        main()
    except (AutoMLInputError, OSError) as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        sys.exit(2)
