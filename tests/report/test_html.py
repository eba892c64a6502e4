"""The static report: leaderboards with CIs and verdicts from the store, figures copied beside the page, export;
and, in real Chromium, the page loads with no console error and every image resolves."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from trojanbench.errors import UserError
from trojanbench.report.html import figure_row, render_report
from trojanbench.report.plots import roc_plot
from trojanbench.results import ResultRow, ResultsStore
from trojanbench.results.export import export_rows
from trojanbench.testing.browser import chromium, open_page


def _agg(tool, task, metric, value, low, high, baseline=False):
    return ResultRow(tool, "zoo:toy", task, metric, value, extra={"low": low, "high": high, "n": 16, "baseline": baseline})


@pytest.fixture
def results(tmp_path):
    path = tmp_path / "results.sqlite"
    rng = np.random.default_rng(0)
    labels = np.array([0] * 8 + [1] * 8)
    png = roc_plot({"good": (labels, labels + rng.normal(0, 0.3, 16)), "random": (labels, rng.random(16))},
                   tmp_path / "figs" / "roc.png", "toy", {"random"})
    with ResultsStore(path) as store:
        store.write([_agg("random", "detect-model", "auroc", 0.5, 0.3, 0.7, baseline=True),
                     _agg("good", "detect-model", "auroc", 0.95, 0.85, 1.0),
                     _agg("meh", "detect-model", "auroc", 0.6, 0.4, 0.8),
                     _agg("good", "detect-model", "seconds_per_model", 0.2, float("nan"), float("nan")),
                     _agg("toolx", "some-new-task", "hit_rate", 0.4, 0.3, 0.5),
                     _agg("good", "detect-model", "auroc[kind=patch]", 0.99, 0.9, 1.0),
                     _agg("good", "detect-model", "auroc[kind=warp]", 0.8, 0.6, 0.9),
                     _agg("random", "detect-model", "auroc[kind=patch]", 0.5, 0.3, 0.7, baseline=True),
                     ResultRow("good", "model-abc", "detect-model", "score", 0.9),  # per-model rows are not tabled
                     figure_row("detect", "detect-model", png, "ROC curves")])
    return path


def test_report_ranks_tools_marks_baselines_and_copies_figures(results, tmp_path):
    index = render_report(results, tmp_path / "report")
    page = index.read_text()
    assert page.index(">good<") < page.index(">meh<") < page.index(">random<")  # ranked by AUROC
    assert "<tr class=beats><td>1</td><td>good</td>" in page
    assert "<tr class=nobeat><td>2</td><td>meh</td>" in page and "does not beat" in page  # CI crosses the baseline
    assert "<tr class=baseline><td>3</td><td>random</td>" in page
    assert "0.950 <span class=ci>[0.850, 1.000]</span>" in page
    assert "some-new-task" in page and "hit_rate" in page  # a task with no registered view still gets a table
    assert (tmp_path / "report" / "figures" / "detect-model-roc.png").stat().st_size > 1000
    assert "model-abc" not in page
    assert (tmp_path / "report" / "figures" / "detect-model-by-kind.png").stat().st_size > 1000  # per-trigger bars
    assert "auroc[kind=warp]" in page  # the per-kind metrics sit in the collapsible long table


def test_report_refuses_missing_or_empty_stores(tmp_path):
    with pytest.raises(UserError, match="no results store"):
        render_report(tmp_path / "nope.sqlite", tmp_path / "r")
    with ResultsStore(tmp_path / "empty.sqlite"):
        pass
    with pytest.raises(UserError, match="no track results"):
        render_report(tmp_path / "empty.sqlite", tmp_path / "r")


def test_export_csv_and_jsonl_round_trip(results, tmp_path):
    assert export_rows(results, tmp_path / "all.csv") == 10
    rows = list(csv.DictReader((tmp_path / "all.csv").open()))
    assert {r["tool"] for r in rows} == {"random", "good", "meh", "toolx", "detect"}
    assert json.loads(rows[0]["extra"]) is not None
    assert export_rows(results, tmp_path / "good.jsonl", tool="good") == 5
    assert all(json.loads(line)["tool"] == "good" for line in (tmp_path / "good.jsonl").read_text().splitlines())
    with pytest.raises(UserError, match=".csv, .jsonl or .parquet"):
        export_rows(results, tmp_path / "x.xlsx")


def test_cli_report_and_export_errors_are_one_line(results, tmp_path):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "trojanbench.cli", *map(str, args)], capture_output=True, text=True,
                              timeout=300)

    ok = cli("report", results, "-o", tmp_path / "rep")
    assert ok.returncode == 0 and (tmp_path / "rep" / "index.html").exists()
    bad = cli("report", tmp_path / "missing.sqlite")
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: no results store")
    bad = cli("results", "export", results, "-o", tmp_path / "x.txt")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def test_report_renders_in_real_chromium(results, tmp_path):
    exe = chromium()
    index = render_report(results, tmp_path / "report")
    errors, images = open_page(index.as_uri(), exe, tmp_path / "shot.png")
    assert errors == []
    assert images and all(width > 0 for _, width in images), images
    assert (tmp_path / "shot.png").stat().st_size > 10_000
