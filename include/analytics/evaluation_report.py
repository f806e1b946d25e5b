"""The evaluation report a reviewer reads before approving a model version.

Everything comes from the evaluation job's output folder (``evaluate/``): ``evaluation.json``
(metrics, per-class figures, confusion matrix, accuracy CI, debugger and profiler summaries),
``comparison.json`` (the deployed version scored on the same test split, when one was
deployed), ``misclassified.json`` (sample errors per class pair) and ``confusion_matrix.png``.
An optional ``baseline`` (the AutoML baseline's figures, once that DAG exists) is shown as one
more column. :func:`render_html` writes one self-contained page (the PNG is inlined) from
``templates/evaluation_report.html.j2``;
:func:`approval_markdown` is the short version for the Airflow approval request.
"""
from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from pathlib import Path

from include.common.io import write_text_atomic
from include.common.templating import render

REPORT_NAME = "report.html"
TEMPLATES = Path(__file__).resolve().parent / "templates"
CLASSES = ("negative", "neutral", "positive")


class EvaluationReportError(ValueError):
    """The evaluation folder lacks what the report needs."""


@dataclass
class Column:
    """One model in the comparison: the candidate, the deployed version, a baseline."""

    title: str
    accuracy: float | None
    macro_f1: float | None
    per_class_f1: dict[str, float] = field(default_factory=dict)
    note: str = ""


@dataclass
class EvaluationInputs:
    """What the evaluation job wrote, loaded."""

    evaluation: dict
    comparison: dict | None = None
    misclassified: list[dict] = field(default_factory=list)
    confusion_png: bytes | None = None


def load(folder: Path | str) -> EvaluationInputs:
    """Read an ``evaluate/`` folder; only ``evaluation.json`` is required."""
    folder = Path(folder)
    path = folder / "evaluation.json"
    if not path.is_file():
        raise EvaluationReportError(f"{path}: missing - the evaluation job did not write its report")
    try:
        evaluation = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise EvaluationReportError(f"{path}: not valid JSON ({exc})") from None
    missing = [k for k in ("metrics", "per_class", "confusion_matrix", "test_rows") if k not in evaluation]
    if missing:
        raise EvaluationReportError(f"{path}: lacks {', '.join(missing)} (not an evaluate.py report)")

    def optional(name: str):
        p = folder / name
        return json.loads(p.read_text()) if p.is_file() else None

    png = folder / "confusion_matrix.png"
    return EvaluationInputs(evaluation, optional("comparison.json"), optional("misclassified.json") or [],
                            png.read_bytes() if png.is_file() else None)


def columns(inputs: EvaluationInputs, candidate_version: str = "", baseline: dict | None = None) -> list[Column]:
    """The candidate, the deployed version on the same split (if any), and ``baseline`` (if any).

    ``baseline`` is the hook for the AutoML baseline: ``{"title", "accuracy", "macro_f1",
    "per_class": {class: {"f1": ...}}, "note"}``; keys it lacks show as blanks.
    """
    ev = inputs.evaluation
    title = f"candidate v{candidate_version}" if candidate_version else "candidate"
    cols = [Column(title, ev["metrics"]["accuracy"]["value"], ev["metrics"]["macro_f1"]["value"],
                   {k: v["f1"] for k, v in ev["per_class"].items()})]
    deployed = (inputs.comparison or {}).get("deployed")
    if deployed:
        cols.append(Column(f"deployed v{deployed.get('version') or '?'}", deployed["accuracy"], deployed["macro_f1"],
                           {k: v["f1"] for k, v in deployed["per_class"].items()}, "same test split"))
    if baseline:
        cols.append(Column(str(baseline.get("title") or "AutoML baseline"), baseline.get("accuracy"),
                           baseline.get("macro_f1"),
                           {k: v.get("f1") for k, v in (baseline.get("per_class") or {}).items()},
                           str(baseline.get("note") or "")))
    return cols


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _delta(new: float | None, old: float | None) -> str:
    return "-" if new is None or old is None else f"{new - old:+.4f}"


def debugger_warnings(evaluation: dict) -> list[str]:
    """One line per debugger rule that triggered during training."""
    out = []
    for rule in (evaluation.get("debugger") or {}).get("triggered") or []:
        if isinstance(rule, dict):
            out.append(f"{rule.get('rule', '?')}: {rule.get('message') or rule.get('status') or 'triggered'}")
        else:
            out.append(str(rule))
    return out


def _rows(cols: list[Column]) -> list[tuple[str, list[float | None]]]:
    """(metric, value per column): accuracy, macro-F1, then F1 per class."""
    rows = [("accuracy", [c.accuracy for c in cols]), ("macro-F1", [c.macro_f1 for c in cols])]
    return rows + [(f"F1 {k}", [c.per_class_f1.get(k) for c in cols]) for k in CLASSES]


def _has_deployed(cols: list[Column]) -> bool:
    return len(cols) > 1 and cols[1].title.startswith("deployed")


def approval_markdown(inputs: EvaluationInputs, *, version: str, data_range: str, report_url: str,
                      baseline: dict | None = None) -> str:
    """The body of the approval request: comparison table, change per class, data, warnings, link."""
    ev = inputs.evaluation
    cols = columns(inputs, version, baseline)
    deployed = _has_deployed(cols)
    lo, hi = ev.get("accuracy_ci95") or (None, None)
    headers = ["metric", *(c.title for c in cols)] + (["change vs deployed"] if deployed else [])
    lines = [f"**Test split**: {ev['test_rows']} reviews; candidate accuracy 95% CI {_fmt(lo, 3)}-{_fmt(hi, 3)}"
             + (" (the deployed version was scored on the same reviews)." if deployed else "."),
             f"**Trained on**: {data_range}.", "",
             "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for name, values in _rows(cols):
        cells = [name, *(_fmt(v) for v in values)] + ([_delta(values[0], values[1])] if deployed else [])
        lines.append("| " + " | ".join(cells) + " |")
    if not deployed:
        lines += ["", "No version is deployed yet: nothing to compare with."]
    warnings = debugger_warnings(ev)
    lines += ["", "**Debugger warnings**: " + ("; ".join(warnings) if warnings else "none"), "",
              f"[Open the evaluation report]({report_url}) (confusion matrix, per-class table, "
              "misclassified reviews, profiler)."]
    return "\n".join(lines)


def _comparison(cols: list[Column]) -> dict:
    deployed = _has_deployed(cols)
    headers = ["metric", *(c.title + (f" ({c.note})" if c.note else "") for c in cols)]
    headers += ["change vs deployed"] if deployed else []
    rows = [[name, *(_fmt(v) for v in values)] + ([_delta(values[0], values[1])] if deployed else [])
            for name, values in _rows(cols)]
    return {"headers": headers, "rows": rows, "deployed": deployed}


def _per_class(ev: dict) -> list[list[str]]:
    return [[k, _fmt(v["precision"]), _fmt(v["recall"]), _fmt(v["f1"]), str(v["support"])]
            for k, v in ev["per_class"].items()]


def _samples(samples: list[dict]) -> list[list[str]]:
    return [[s["true"], s["predicted"], _fmt(s.get("probability"), 2),
             s.get("review_body") or f"(text not in the test shards; review_id {s['review_id']})"] for s in samples]


def _rule_rows(ev: dict) -> list[list[str]]:
    rules = (ev.get("debugger") or {}).get("rules") or {}
    rule_list = rules.get("rules") or [] if isinstance(rules, dict) else []
    return [[str(r.get("rule")), str(r.get("status")), str(r.get("message") or "")] for r in rule_list]


def render_html(inputs: EvaluationInputs, *, title: str, version: str = "", data_range: str = "",
                baseline: dict | None = None) -> str:
    """The self-contained evaluation report (one HTML page, confusion matrix inlined), from
    ``templates/evaluation_report.html.j2``; every text is escaped (review texts included)."""
    ev = inputs.evaluation
    lo, hi = ev.get("accuracy_ci95") or (None, None)
    png = base64.b64encode(inputs.confusion_png).decode("ascii") if inputs.confusion_png else ""
    profiler = [[str(k), _fmt(v) if isinstance(v, float) else str(v)] for k, v in (ev.get("profiler") or {}).items()]
    return render(TEMPLATES, "evaluation_report.html.j2", title=title, data_range=data_range,
                  accuracy=_fmt(ev["metrics"]["accuracy"]["value"]), ci_low=_fmt(lo, 3), ci_high=_fmt(hi, 3),
                  macro_f1=_fmt(ev["metrics"]["macro_f1"]["value"]), test_rows=ev["test_rows"],
                  comparison=_comparison(columns(inputs, version, baseline)), per_class=_per_class(ev),
                  confusion=ev["confusion_matrix"], confusion_png=png, samples=_samples(inputs.misclassified),
                  warnings=debugger_warnings(ev), rules=_rule_rows(ev), profiler=profiler)


def write_report(folder: Path | str, *, title: str, version: str = "", data_range: str = "",
                 baseline: dict | None = None) -> Path:
    """Render the report of the evaluation folder ``folder`` into ``folder/report.html`` (atomically)."""
    folder = Path(folder)
    page = render_html(load(folder), title=title, version=version, data_range=data_range, baseline=baseline)
    return write_text_atomic(folder / REPORT_NAME, page)
