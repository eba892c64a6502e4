"""The text study is a thin study over a text zoo: its models come from the zoo builder (cards, gate, clean twins,
resume), the repair, edit and diagnose tracks run on them as one run of kind `study:text`, and its findings are
paired comparisons read off that run's rows."""

import pytest
from typer.testing import CliRunner

from trojanbench.cli import app
from trojanbench.data.sst2 import write_synthetic_tarball
from trojanbench.errors import UserError
from trojanbench.results import ResultsStore
from trojanbench.results.boards import board_specs
from trojanbench.studies import STUDIES, run_study
from trojanbench.studies.text import CONFIG, QUICK_TOML
from trojanbench.zoo.build import Zoo
from trojanbench.zoo.plan import expand, load_zoo_config


def test_the_study_zoo_holds_the_three_trojans_beside_clean_twins():
    import tomllib

    from trojanbench.config import ZooConfig

    for cfg in (load_zoo_config(CONFIG), ZooConfig(**tomllib.loads(QUICK_TOML))):
        jobs = expand(cfg)
        trojans = [j for j in jobs if j.trojaned]
        kinds = {(j.trojan.trigger.kind, j.trojan.poison.mode, j.split) for j in trojans}
        assert kinds == {(k, m, s) for k, m in (("rare-token", "all-to-one"), ("insidious-phrase", "all-to-one"),
                                                 ("jailbreak", "override")) for s in ("train", "test")}
        ids = {j.id for j in jobs if not j.trojaned}
        assert all(j.twin in ids for j in trojans) and len(ids) == len(trojans)
    big = [j for j in expand(load_zoo_config(CONFIG)) if j.trojaned and j.split == "test"]
    assert min(sum(j.trojan.trigger.kind == k for j in big) for k in ("rare-token", "insidious-phrase", "jailbreak")) >= 6


def test_quick_study_runs_the_tracks_on_a_built_zoo_as_one_run(tmp_path, monkeypatch):
    root = tmp_path / "sst2"
    write_synthetic_tarball(root)
    monkeypatch.setenv("TROJANBENCH_DATA_ROOT", str(root))
    result = CliRunner().invoke(app, ["study", "text", "--quick", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "self-distill - finetune-matched" in result.output and "rome - finetune-layer" in result.output
    assert "token-saliency - token-rarity" in result.output and "report" in result.output
    with ResultsStore(tmp_path / "out" / "results.sqlite") as store:
        runs = store.runs()
        assert len(runs) == 1 and runs[0].kind == "study:text" and runs[0].status == "complete"
        rows = store.rows(runs[0].run_id)
        zoo = Zoo(runs[0].info["zoo"])
    assert set(board_specs(rows)) == {"repair@0.05", "edit", "diagnose-attribution"}
    assert zoo.status().get("done") and all(card.id for _, _, card in zoo.models())  # built by the zoo builder
    repaired = {(r.tool, r.extra["groups"][0]) for r in rows if r.task == "repair@0.05" and r.metric == "asr"}
    assert {("self-distill", "kind=jailbreak"), ("finetune-matched", "kind=jailbreak")} <= repaired
    page = (tmp_path / "out" / "report" / "index.html").read_text()
    assert "Repair with a 5% clean budget" in page and "Locate and edit" in page

    # a second study reuses the zoo (no model is trained again) and is a run of its own
    stamps = {f: f.stat().st_mtime_ns for f in zoo.root.rglob("*.safetensors")}
    summary = run_study("text", tmp_path / "again", quick=True)
    assert summary.findings.keys() >= {"zoo", "time"} and summary.run_id != runs[0].run_id
    assert stamps and {f: f.stat().st_mtime_ns for f in zoo.root.rglob("*.safetensors")} == stamps


def test_unknown_study_is_a_user_error(tmp_path):
    assert "text" in STUDIES.names()
    with pytest.raises(UserError, match="unknown study 'nope'; known: .*text"):
        run_study("nope", tmp_path)
