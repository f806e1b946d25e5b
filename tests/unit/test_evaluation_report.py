"""The evaluation report and the approval text, rendered from a real evaluation job's output."""
from __future__ import annotations

import json
import sys
import tarfile
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from include.analytics import evaluation_report
from include.scripts import evaluate

SCRIPTS = str(Path(__file__).resolve().parents[2] / "include" / "scripts")
if SCRIPTS not in sys.path:  # the job script imports its sibling modeling.py as a top-level module
    sys.path.insert(0, SCRIPTS)

TEXTS = ["love it, fits perfectly", "hate it, it fell apart", "it is fine I guess", "great dress for summer",
         "awful fit and cheap fabric", "okay, nothing special", "my favourite top", "returned it the same day"]
LABELS = [2, 0, 1, 2, 0, 1, 2, 0]


class Tables(HTMLParser):
    """Every <table> of a page as rows of cell texts, keyed by its class attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._cls = self._row = self._cell = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self._cls = dict(attrs).get("class", "")
            self.tables[self._cls] = []
        elif tag == "tr" and self._cls is not None:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = ""

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append(self._cell.strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.tables[self._cls].append(self._row)
            self._row = None
        elif tag == "table":
            self._cls = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


def tables_of(page: str) -> dict[str, list[list[str]]]:
    parser = Tables()
    parser.feed(page)
    return parser.tables


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, classifier_dir, model_dir):
    """The evaluation job run on 8 test reviews, with the same model as the "deployed" version
    and a training output that carries a triggered debugger rule and a profiler summary."""
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("evaluated")
    for name in ("model", "deployed"):
        (root / name).mkdir()
        with tarfile.open(root / name / "model.tar.gz", "w:gz") as tar:
            for f in classifier_dir.iterdir():
                tar.add(f, arcname=f.name)
    (root / "training" / "out" / "debugger").mkdir(parents=True)
    (root / "training" / "out" / "profiler").mkdir()
    rule = {"rule": "LossNotDecreasing", "action": "log", "status": "IssuesFound", "triggered": True,
            "message": "loss flat for 40 steps"}
    (root / "training/out/debugger/rule_results.json").write_text(json.dumps({"rules": [rule]}))
    (root / "training/out/profiler/summary.json").write_text(json.dumps({"device": "cpu", "samples_per_s": 21.5}))
    with tarfile.open(root / "training" / "output.tar.gz", "w:gz") as tar:
        tar.add(root / "training" / "out" / "debugger", arcname="debugger")
        tar.add(root / "training" / "out" / "profiler", arcname="profiler")
    tok = AutoTokenizer.from_pretrained(model_dir)
    (root / "test").mkdir()
    pd.DataFrame({"review_id": [f"r{i}" for i in range(len(TEXTS))], "input_ids": tok(TEXTS)["input_ids"],
                  "label_id": LABELS, "review_body": TEXTS}).to_parquet(root / "test" / "part-00000.parquet")
    out = root / "metrics"
    evaluate.main(["--model", str(root / "model"), "--test-data", str(root / "test"),
                   "--training-output", str(root / "training"), "--deployed-model", str(root / "deployed"),
                   "--deployed-version", "3", "--output-data", str(out)])
    return out


def test_evaluation_job_scores_the_deployed_version_on_the_same_split(evaluated):
    ev = json.loads((evaluated / "evaluation.json").read_text())
    deployed = json.loads((evaluated / "comparison.json").read_text())["deployed"]
    assert deployed["version"] == "3" and deployed["test_rows"] == ev["test_rows"] == len(TEXTS)
    # the same weights on the same reviews: the same figures
    assert deployed["accuracy"] == pytest.approx(ev["metrics"]["accuracy"]["value"])
    assert deployed["confusion_matrix"]["matrix"] == ev["confusion_matrix"]["matrix"]
    assert ev["profiler"]["samples_per_s"] == 21.5
    assert [r["rule"] for r in ev["debugger"]["triggered"]] == ["LossNotDecreasing"]


def test_misclassified_samples_are_the_real_errors_with_their_text(evaluated):
    preds = pd.read_csv(evaluated / "predictions.csv")
    wrong = preds[preds["label_id"] != preds["predicted"]]
    samples = json.loads((evaluated / "misclassified.json").read_text())
    assert len(wrong) > 0, "an untrained head on 8 reviews makes errors"
    assert len(samples) == min(len(wrong), sum(min(3, n) for n in wrong.groupby(["label_id", "predicted"]).size()))
    names = {0: "negative", 1: "neutral", 2: "positive"}
    for s in samples:
        row = wrong[wrong["review_id"] == s["review_id"]].iloc[0]
        assert (s["true"], s["predicted"]) == (names[row["label_id"]], names[row["predicted"]])
        assert s["review_body"] == TEXTS[int(s["review_id"][1:])]


def test_report_shows_the_numbers_of_evaluation_json(evaluated):
    ev = json.loads((evaluated / "evaluation.json").read_text())
    inputs = evaluation_report.load(evaluated)
    page = evaluation_report.render_html(inputs, title="Evaluation", version="4", data_range="ds 2026-11-01..2026-11-20")
    t = tables_of(page)
    per_class = {r[0]: r[1:] for r in t["t per-class"][1:]}
    for name, m in ev["per_class"].items():
        assert per_class[name] == [f"{m['precision']:.4f}", f"{m['recall']:.4f}", f"{m['f1']:.4f}", str(m["support"])]
    confusion = [r[1:] for r in t["t confusion"][1:]]
    assert confusion == [[str(v) for v in row] for row in ev["confusion_matrix"]["matrix"]]
    cmp = {r[0]: r[1:] for r in t["t cmp"]}
    assert cmp["metric"][:2] == ["candidate v4", "deployed v3 (same test split)"]
    assert cmp["accuracy"] == [f"{ev['metrics']['accuracy']['value']:.4f}"] * 2 + ["+0.0000"]
    assert cmp["macro-F1"][0] == f"{ev['metrics']['macro_f1']['value']:.4f}"
    lo, hi = ev["accuracy_ci95"]
    assert f"95% CI {lo:.3f}-{hi:.3f}" in page and "ds 2026-11-01..2026-11-20" in page
    assert "LossNotDecreasing: loss flat for 40 steps" in page
    assert ["samples_per_s", "21.5000"] in t["t kv"]
    shown = {r[3] for r in t["t samples"][1:]}
    assert inputs.misclassified
    assert shown == {s["review_body"] for s in inputs.misclassified}
    assert "data:image/png;base64," in page and "file://" not in page


def test_baseline_is_an_optional_extra_column(evaluated):
    inputs = evaluation_report.load(evaluated)
    without = tables_of(evaluation_report.render_html(inputs, title="x"))["t cmp"][0]
    baseline = {"title": "AutoML baseline (tf-idf + logreg)", "accuracy": 0.61, "macro_f1": 0.6,
                "per_class": {"neutral": {"f1": 0.42}}}
    rows = {r[0]: r[1:] for r in tables_of(evaluation_report.render_html(inputs, title="x", baseline=baseline))["t cmp"]}
    assert len(rows["metric"]) == len(without[1:]) + 1  # one more column
    assert rows["metric"][2] == "AutoML baseline (tf-idf + logreg)"
    assert rows["accuracy"][2] == "0.6100" and rows["F1 neutral"][2] == "0.4200" and rows["F1 negative"][2] == "-"


def test_approval_markdown_compares_with_the_deployed_version_and_links_the_report(evaluated):
    inputs = evaluation_report.load(evaluated)
    ev = inputs.evaluation
    body = evaluation_report.approval_markdown(inputs, version="4", data_range="ds 2026-11-01..2026-11-20",
                                               report_url="/reports/runs/d/r/evaluate/report.html")
    acc = f"{ev['metrics']['accuracy']['value']:.4f}"
    assert "| metric | candidate v4 | deployed v3 | change vs deployed |" in body
    assert f"| accuracy | {acc} | {acc} | +0.0000 |" in body
    for name in ("negative", "neutral", "positive"):
        assert f"| F1 {name} | {ev['per_class'][name]['f1']:.4f} |" in body
    assert "Trained on**: ds 2026-11-01..2026-11-20" in body and "LossNotDecreasing" in body
    assert "(/reports/runs/d/r/evaluate/report.html)" in body and "file://" not in body


def test_first_model_has_nothing_to_compare_with(evaluated, tmp_path):
    for name in ("evaluation.json", "misclassified.json"):
        (tmp_path / name).write_bytes((evaluated / name).read_bytes())
    inputs = evaluation_report.load(tmp_path)
    assert inputs.comparison is None and inputs.confusion_png is None
    body = evaluation_report.approval_markdown(inputs, version="1", data_range="ds 2026-11-20", report_url="u")
    assert "No version is deployed yet" in body and "change vs deployed" not in body
    path = evaluation_report.write_report(tmp_path, title="first")
    assert path == tmp_path / "report.html" and "No version is deployed yet" in path.read_text()


def test_missing_or_foreign_evaluation_json_is_a_clear_error(tmp_path):
    with pytest.raises(evaluation_report.EvaluationReportError, match="evaluation.json: missing"):
        evaluation_report.load(tmp_path)
    (tmp_path / "evaluation.json").write_text('{"metrics": {}}')
    with pytest.raises(evaluation_report.EvaluationReportError, match="lacks per_class, confusion_matrix, test_rows"):
        evaluation_report.load(tmp_path)


def test_review_texts_and_titles_are_escaped_in_the_report():
    ev = {"metrics": {"accuracy": {"value": 0.5}, "macro_f1": {"value": 0.5}}, "test_rows": 2,
          "per_class": {c: {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 1} for c in ("negative", "positive")},
          "confusion_matrix": {"labels": ["negative", "positive"], "matrix": [[1, 0], [1, 0]]}}
    sample = {"true": "positive", "predicted": "negative", "probability": 0.9,
              "review_body": "<script>alert('x')</script> & more"}
    page = evaluation_report.render_html(evaluation_report.EvaluationInputs(ev, misclassified=[sample]),
                                         title="<b>run</b>", data_range="<i>ds</i>")
    assert "<script>" not in page and "<b>run</b>" not in page and "<i>ds</i>" not in page
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; more" in page
    assert tables_of(page)["t samples"][1][3] == "<script>alert('x')</script> & more"
