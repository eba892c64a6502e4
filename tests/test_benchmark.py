"""The whole benchmark on a tiny zoo: every track writes results and figures, the report shows them all, and
the page renders in real Chromium with every image resolving."""

import pytest

from trojanbench.bench import TRACKS, run_benchmark
from trojanbench.config import ZooConfig
from trojanbench.results import ResultsStore
from trojanbench.survey import load_bank
from trojanbench.zoo.build import build_zoo

from trojanbench.testing.browser import chromium, open_page


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory):
    cfg = ZooConfig(name="tiny-all", models_per_arch=8, test_fraction=0.5,
                    archs=[{"arch": "cnn", "kwargs": {"width": 8, "depth": 2}}],
                    trojans={"kinds": ["patch"], "targets": [2, 7], "rates": [0.1]},
                    train={"epochs": 8}, gate={"min_asr": 0.5, "max_clean_drop": 0.2, "retries": 0})
    out = tmp_path_factory.mktemp("bench") / "zoo"
    build_zoo(cfg, out, batch_models=8)
    return out


def test_every_track_lands_in_the_store_and_the_report(tiny_zoo, tmp_path):
    assert list(TRACKS) == ["detect", "diagnose", "synthesize", "repair", "edit"]
    run = run_benchmark(tmp_path / "run", zoo=tiny_zoo, tools=["random", "entropy", "saliency", "sobel", "finetune", "do-nothing", "rank-one-edit",
                                                          "adversarial-patch", "noise-patch"])
    assert [t for t, _ in run.boards] == ["detect", "detect", "diagnose", "synthesize", "repair", "edit"]
    with ResultsStore(run.results) as store:
        tasks = {r.task for r in store.rows() if r.model_id.startswith("zoo:")}
        assert {"detect-model", "detect-samples", "diagnose-attribution", "synthesize", "repair", "edit"} <= tasks
        assert {r.tool for r in store.rows(task="synthesize", metric="mc_accuracy")} == {"adversarial-patch", "noise-patch"}
        figures = store.rows(metric="figure")
        assert {f.task for f in figures} == {"zoo", "detect-model", "diagnose-attribution", "synthesize", "repair", "edit"}
    bank = load_bank(run.results.parent / "survey")  # the same 8-way questions, for people
    assert {q.tool for q in bank.questions} == {"adversarial-patch", "noise-patch"} and len(bank.questions) % 2 == 0
    page = run.report.read_text()
    for title in ("is this model trojaned", "do attribution maps point at the trigger", "attack success after repair",
                  "rank-one update", "transfer asr", "8-way multiple-choice"):
        assert title in page.lower()
    assert page.count("<img ") >= len(figures)

    errors, images = open_page(run.report.as_uri(), chromium(), tmp_path / "report.png")
    assert errors == [] and len(images) >= len(figures) and all(w > 0 for _, w in images), images
