"""The whole benchmark on a tiny zoo: every track writes its per-model rows and board into one run, the report
shows every board and figure, and the page renders in real Chromium with every image resolving."""

from pathlib import Path

import pytest

from trojanbench.bench import TRACKS, run_benchmark
from trojanbench.results import ResultsStore
from trojanbench.results.boards import board_specs
from trojanbench.survey import load_bank
from trojanbench.testing.browser import chromium, open_page


def test_every_track_lands_in_the_store_and_the_report(tiny_zoo, tmp_path):
    assert list(TRACKS) == ["detect", "diagnose", "synthesize", "repair", "edit"]
    run = run_benchmark(tmp_path / "run", zoo=tiny_zoo, tools=["random", "entropy", "saliency", "sobel", "finetune",
                                                              "do-nothing", "rome", "adversarial-patch", "noise-patch"])
    assert [t for t, _ in run.boards] == ["detect", "detect", "diagnose", "synthesize", "synthesize", "repair", "edit"]
    with ResultsStore(run.results) as store:
        (info,) = store.runs()
        assert info.run_id == run.run_id and info.status == "complete"
        rows = store.rows(run.run_id)
    specs = board_specs(rows)
    assert set(specs) == {"detect-model", "detect-samples", "diagnose-attribution", "synthesize", "synthesize-mc",
                          "repair@0.05", "edit"}
    assert {r.tool for r in rows if r.task == "synthesize-mc" and r.metric == "mc_correct"} == {
        "adversarial-patch", "noise-patch"}
    figures = [r for r in rows if r.metric == "figure"]
    assert {f.task for f in figures} == {"zoo", "detect-model", "diagnose-attribution", "synthesize", "repair@0.05", "edit"}
    assert {Path(f.extra["path"]).parent for f in figures} == {(tmp_path / "run" / "figures" / run.run_id).resolve()}
    bank = load_bank(run.results.parent / "survey")  # the same multiple-choice questions, for people
    assert {q.tool for q in bank.questions} <= {"adversarial-patch", "noise-patch"}
    page = run.report.read_text()
    for title in ("is this model trojaned", "do attribution maps point at the trigger", "attack success after repair",
                  "rank-one update", "specificity", "multiple choice", "the tools in this run"):
        assert title in page.lower(), title
    assert page.count("<img ") >= len(figures)

    errors, images = open_page(run.report.as_uri(), chromium(), tmp_path / "report.png")
    assert errors == [] and len(images) >= len(figures) and all(w > 0 for _, w in images), images


def test_the_quick_default_runs_every_track_with_tools_and_their_baselines():
    """`make run` (no --config, no --tools) scores the quick default zoo with `QUICK_TOOLS`: every track gets at least
    one tool and one baseline; `--tools all`, or any other config, runs every registered tool."""
    from trojanbench.bench import DEFAULT_CONFIG, QUICK_TOOLS, check_tracks, default_tools, split_tools

    assert DEFAULT_CONFIG == "digits-quick" and default_tools(DEFAULT_CONFIG, None) == QUICK_TOOLS
    assert default_tools(DEFAULT_CONFIG, ["all"]) is None and default_tools("digits-bench", None) is None
    assert default_tools("digits-bench", ["spectral"]) == ["spectral"]
    routed = split_tools(QUICK_TOOLS, check_tracks(None))
    assert set(routed) == set(TRACKS)
    for track, names in routed.items():
        kinds = {reg.get(n).is_baseline for reg in TRACKS[track].registries() for n in names if n in reg.names()}
        assert kinds == {True, False}, track
    from trojanbench.tools.detect import DETECTORS, SAMPLE_DETECTORS

    for registry in (DETECTORS, SAMPLE_DETECTORS):  # both detect boards, not just the track
        assert {registry.get(n).is_baseline for n in QUICK_TOOLS if n in registry.names()} == {True, False}
    from trojanbench.errors import UserError

    # one track of the quick default (`run --tracks detect`): the default set narrowed to it, not an error
    routed = split_tools(QUICK_TOOLS, ["detect"], strict=False)
    assert set(routed) == {"detect"}
    from trojanbench.bench import _flat

    assert "spectral" in _flat(routed) and "integrated-gradients" not in _flat(routed)  # what `runs` lists
    with pytest.raises(UserError, match="unknown tool 'integrated-gradients' in tracks detect"):
        split_tools(["integrated-gradients"], ["detect"])  # a tool the user names must fit the tracks


def test_one_track_of_the_quick_default_runs_its_share_of_the_default_tools(tmp_path, monkeypatch):
    """`trojanbench run --tracks detect` used to stop at once: the quick default's diagnose tools are unknown to
    the detect track."""
    import trojanbench.zoo.build

    class Reached(Exception):
        pass

    def stop(*args, **kwargs):
        raise Reached

    monkeypatch.setattr(trojanbench.zoo.build, "build_zoo", stop)
    monkeypatch.setenv("TROJANBENCH_CACHE", str(tmp_path / "cache"))
    with pytest.raises(Reached):  # past the routing of tools, to the zoo build
        run_benchmark(tmp_path / "run", tracks=["detect"], report=False)


def test_a_copy_of_the_quick_default_runs_the_quick_set_and_batched_runs_no_track(tmp_path, monkeypatch):
    """Defaults were looked up by the --config string, so `--config my/digits-quick.toml` ran every tool; and
    `--track-executor batched` (a zoo trainer) was accepted."""
    from importlib import resources

    import trojanbench.bench as bench
    import trojanbench.zoo.build
    from trojanbench.errors import UserError

    class Reached(Exception):
        pass

    seen = []
    real = bench.split_tools
    monkeypatch.setattr(bench, "split_tools", lambda tools, tracks, strict: seen.append(tools) or real(tools, tracks, strict))
    monkeypatch.setattr(trojanbench.zoo.build, "build_zoo", lambda *a, **k: (_ for _ in ()).throw(Reached()))
    monkeypatch.setenv("TROJANBENCH_CACHE", str(tmp_path / "cache"))
    copy = tmp_path / "mine.toml"
    copy.write_text(resources.files("trojanbench.zoo.configs").joinpath("digits-quick.toml").read_text())
    with pytest.raises(Reached):
        run_benchmark(tmp_path / "run", config=str(copy), report=False)
    assert seen == [bench.QUICK_TOOLS]
    with pytest.raises(UserError, match="unknown track executor 'batched'; known: pool, serial, ray"):
        run_benchmark(tmp_path / "run", track_executor="batched", report=False)


def test_a_tool_for_other_inputs_is_refused_before_the_zoo_is_built(tmp_path, monkeypatch):
    from trojanbench.bench import run_benchmark
    from trojanbench.errors import UserError

    monkeypatch.setenv("TROJANBENCH_CACHE", str(tmp_path / "cache"))
    with pytest.raises(UserError, match="dbs works on text models; this zoo's models take image"):
        run_benchmark(tmp_path / "run", tools=["dbs"])
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.safetensors"))


def test_failed_zoo_jobs_stop_the_run_with_the_first_cause(tmp_path, monkeypatch):
    from trojanbench.bench import run_benchmark
    from trojanbench.errors import UserError

    monkeypatch.setenv("TROJANBENCH_CACHE", str(tmp_path / "cache"))
    config = tmp_path / "bad-patch.toml"  # a 40-pixel patch on 16x16 digits: every trojan job fails, twice
    config.write_text('name = "bad-patch"\nmodels_per_arch = 2\n[data]\nname = "digits"\n[[archs]]\narch = "cnn"\n'
                      'kwargs = { width = 4, depth = 1 }\n[trojans]\nkinds = ["patch"]\n'
                      'variants = { patch = [{ size = 40 }] }\n[train]\nepochs = 1\n[gate]\nretries = 0\n')
    with pytest.raises(UserError, match=r"^1 zoo jobs failed \(the first: .*does not fit.*\); see `trojanbench zoo"):
        run_benchmark(tmp_path / "run", config=str(config), tracks=["detect"])
