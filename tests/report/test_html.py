"""The static report: one run's boards (cells with CIs, paired verdicts) computed from its per-model rows, figures
copied beside the page, export; and, in real Chromium, the page loads with no console error and every image
resolves."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from trojanbench.errors import UserError
from trojanbench.report.html import View, figure_row, render_report, view_row
from trojanbench.report.plots import roc_plot
from trojanbench.results import ResultRow, ResultsStore
from trojanbench.results.boards import BoardSpec, Column, model_row, spec_row
from trojanbench.results.export import export_rows
from trojanbench.testing.browser import chromium, open_page

SPEC = BoardSpec(task="detect-model", title="Is this model trojaned?", key="auroc", population="toy zoo: 20 + 20 models",
                 columns=[Column(name="auroc", source="score", stat="auroc", header="AUROC"),
                          Column(name="seconds_per_model", source="seconds", stat="timing", groups=False)],
                 main=["auroc", "auroc[kind=patch]", "seconds_per_model"])


def _rows(seed: int):
    rng = np.random.default_rng(seed)
    labels = np.array([0] * 20 + [1] * 20)
    kinds = ["patch", "warp"] * 10
    scores = {"good": labels + rng.normal(0, 0.3, 40), "meh": labels * 0.3 + rng.normal(0, 0.5, 40),
              "random": rng.random(40), "entropy": labels * 0.2 + rng.normal(0, 0.5, 40)}
    rows = [spec_row(SPEC)]
    for tool, s in scores.items():
        role = "baseline" if tool in ("random", "entropy") else "tool"
        for i in range(40):
            groups = [f"kind={kinds[i % 20]}", "crude"] if labels[i] else []
            rows.append(model_row(tool, f"m{i}", "detect-model", "score", s[i], role=role, groups=groups, label=labels[i]))
            rows.append(model_row(tool, f"m{i}", "detect-model", "seconds", 0.1, role=role, groups=groups))
    return rows, labels, scores


@pytest.fixture
def results(tmp_path):
    path = tmp_path / "results.sqlite"
    rows, labels, scores = _rows(0)
    png = roc_plot({t: (labels, s) for t, s in scores.items()}, tmp_path / "figs" / "roc.png", "toy", {"random"})
    study = [ResultRow("toolx", "zoo:toy", "some-study-task", "hit_rate", 0.4, extra={"low": 0.3, "high": 0.5, "n": 16}),
             view_row("some-study-task", View("A study's own table", "hit_rate"))]
    with ResultsStore(path) as store:
        target = store.start_run("test", {"fixture": 0})
    with ResultsStore(target) as store:
        store.write(rows + study + [figure_row("detect", "detect-model", png, "ROC curves")])
        store.finish_run(target.run_id)
    return path


def test_report_ranks_tools_gives_paired_verdicts_and_copies_figures(results, tmp_path):
    index = render_report(results, tmp_path / "report")
    page = index.read_text()
    assert page.index(">good<") < page.index(">meh<")  # ranked by AUROC
    assert "<tr class=beats><td>1</td><td>good</td>" in page  # clearly above the strongest baseline
    assert "vs entropy" in page or "vs random" in page  # the verdict names the strongest baseline
    assert "<tr class=baseline>" in page and "Holm" in page
    assert "n=20" in page  # every cell says how many models stand behind it
    assert "toy zoo: 20 + 20 models" in page  # what the numbers are conditional on
    assert "A study&#x27;s own table" in page and "hit_rate" in page  # a study's stored table, with its stored view
    assert (tmp_path / "report" / "figures" / "detect-model-roc.png").stat().st_size > 1000
    assert (tmp_path / "report" / "figures" / "detect-model-by-kind.png").stat().st_size > 1000  # per-trigger bars
    assert "auroc[kind=warp]" in page  # the per-kind cells sit in the collapsible long table


def test_a_figure_redrawn_after_its_run_is_not_shown_as_that_run_s(results, tmp_path):
    """Runs into one folder wrote their figures to the same names: an earlier run's report showed a later run's
    ROC curves. Figures now live under the run's id (bench), and a report shows a figure only while it is the file
    the run drew (its sha256 is in the figure's row)."""
    png = tmp_path / "figs" / "roc.png"
    png.write_bytes(png.read_bytes() + b"redrawn")
    page = render_report(results, tmp_path / "report").read_text()
    assert "figure roc.png has changed since this run drew it" in page
    assert not (tmp_path / "report" / "figures" / "detect-model-roc.png").exists()


def test_report_refuses_missing_or_empty_stores(tmp_path):
    with pytest.raises(UserError, match="no results store"):
        render_report(tmp_path / "nope.sqlite", tmp_path / "r")
    with ResultsStore(tmp_path / "empty.sqlite"):
        pass
    with pytest.raises(UserError, match="no complete run"):
        render_report(tmp_path / "empty.sqlite", tmp_path / "r")


def test_export_csv_and_jsonl_round_trip(results, tmp_path):
    n = export_rows(results, tmp_path / "all.csv")
    rows = list(csv.DictReader((tmp_path / "all.csv").open()))
    assert len(rows) == n and {r["tool"] for r in rows} == {"random", "entropy", "good", "meh", "toolx"}
    assert len({r["run_id"] for r in rows}) == 1 and json.loads(rows[0]["extra"])["role"] == "baseline"
    assert export_rows(results, tmp_path / "good.jsonl", tool="good") == 80
    lines = [json.loads(line) for line in (tmp_path / "good.jsonl").read_text().splitlines()]
    assert all(r["tool"] == "good" and r["extra"]["role"] == "tool" for r in lines)  # an object, not a JSON string
    assert list(lines[0]) == ["run_id", "tool", "model_id", "task", "metric", "value", "seed", "tool_version", "extra"]
    with pytest.raises(UserError, match=".csv, .jsonl or .parquet"):
        export_rows(results, tmp_path / "x.xlsx")
    with pytest.raises(UserError, match="no measurement rows with tool 'goood'; it has tools: entropy, good, meh, random, "
                                        "toolx$"):  # not "0 rows"; the real tools only
        export_rows(results, tmp_path / "typo.csv", tool="goood")
    assert not (tmp_path / "typo.csv").exists()
    with pytest.raises(UserError, match="tools: entropy, good, meh, random, toolx; only bookkeeping rows match"):
        export_rows(results, tmp_path / "typo.csv", tool="trojanbench")  # a pseudo-tool is no tool
    assert (tmp_path / "all.csv").stat().st_mode & 0o777 == 0o666 & ~_umask()  # not mkstemp's private 0600


def test_export_leaves_out_bookkeeping_rows_unless_asked(results, tmp_path):
    """Board specs, views and figures (pseudo-tools "trojanbench" and "detect", pseudo-models "board", "view",
    "figure:roc.png") were exported as if they were measurements."""
    from trojanbench.report.html import FIGURE, VIEW
    from trojanbench.results.boards import INFO, SPEC_METRIC
    from trojanbench.results.export import BOOKKEEPING

    assert {SPEC_METRIC, INFO, FIGURE, VIEW} <= set(BOOKKEEPING)
    n = export_rows(results, tmp_path / "measured.jsonl")
    measured = [json.loads(line) for line in (tmp_path / "measured.jsonl").read_text().splitlines()]
    assert n == len(measured) == 4 * 80 + 1 and all(r["value"] is not None for r in measured)
    every = export_rows(results, tmp_path / "every.jsonl", all_rows=True)
    extra = [json.loads(line) for line in (tmp_path / "every.jsonl").read_text().splitlines()]
    assert every == n + 3 and {(r["tool"], r["model_id"], r["metric"]) for r in extra} - {
        (r["tool"], r["model_id"], r["metric"]) for r in measured} == {
        ("trojanbench", "board", "spec"), ("trojanbench", "view", "view"), ("detect", "figure:roc.png", "figure")}
    assert export_rows(results, tmp_path / "fig.csv", tool="detect", all_rows=True) == 1


def test_parquet_export_when_pyarrow_is_installed(results, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow is optional (pip install 'trojanbench[parquet]')")
    n = export_rows(results, tmp_path / "all.parquet")
    table = pq.read_table(tmp_path / "all.parquet")
    assert table.num_rows == n and table.column_names == ["run_id", "tool", "model_id", "task", "metric", "value",
                                                          "seed", "tool_version", "extra"]
    assert json.loads(table.column("extra")[0].as_py())["role"] == "baseline"  # a JSON string, as in CSV


def test_parquet_export_without_pyarrow_says_how_to_get_it(results, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if it were not installed
    with pytest.raises(UserError, match=r"pip install 'trojanbench\[parquet\]'"):
        export_rows(results, tmp_path / "all.parquet")


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_cli_report_and_export_errors_are_one_line(results, tmp_path):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "trojanbench.cli", *map(str, args)], capture_output=True, text=True,
                              timeout=300)

    ok = cli("report", results, "-o", tmp_path / "rep")
    assert ok.returncode == 0 and (tmp_path / "rep" / "index.html").exists()
    bad = cli("report", tmp_path / "missing.sqlite")
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: no results store")
    bad = cli("report", results, "--run", "no-such-run")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "no run matching" in bad.stderr
    bad = cli("results", "export", results, "-o", tmp_path / "x.txt")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def test_report_renders_in_real_chromium(results, tmp_path):
    exe = chromium()
    index = render_report(results, tmp_path / "report")
    errors, images = open_page(index.as_uri(), exe, tmp_path / "shot.png")
    assert errors == []
    assert images and all(width > 0 for _, width in images), images
    assert (tmp_path / "shot.png").stat().st_size > 10_000
