"""Paired verdicts among a board's top tools (benchmarks/power.py)."""

import numpy as np

from trojanbench.results.boards import (BoardSpec, Column, compute_board, model_row, paired_comparisons, pairwise, shown_columns,
                                        spec_row)

SPEC = BoardSpec(task="detect-model", title="Is this model trojaned?", key="auroc", main=["auroc"],
                 columns=[Column(name="auroc", source="score", stat="auroc", header="AUROC")])


def rows(n=60):
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        label = i % 2
        common = {"groups": [], "label": label}
        out.append(model_row("sharp", f"m{i}", SPEC.task, "score", label + 0.1 * rng.random(), role="tool", **common))
        out.append(model_row("twin", f"m{i}", SPEC.task, "score", label + 0.1 * rng.random(), role="tool", **common))
        out.append(model_row("coin", f"m{i}", SPEC.task, "score", rng.random(), role="baseline", **common))
        out.append(model_row("worst", f"m{i}", SPEC.task, "score", rng.random() - label, role="tool", **common))
    return out


def test_top_tools_are_compared_pairwise_with_holm():
    r = rows()
    board = compute_board(r, SPEC, n_boot=500)
    pairs = pairwise(r, board, top=3, n_boot=500)
    assert [(p["a"], p["b"]) for p in pairs] == [("sharp", "twin"), ("sharp", "coin"), ("twin", "coin")]
    verdicts = {(p["a"], p["b"]): p["verdict"] for p in pairs}
    assert verdicts[("sharp", "twin")] == "ties"  # both perfect
    assert verdicts[("sharp", "coin")] == verdicts[("twin", "coin")] == "beats"
    assert all(p["p_holm"] >= p["p"] for p in pairs)
    assert all(p["n"] == 30 for p in pairs)  # AUROC pairs: the smaller class


def test_fewer_ranked_tools_than_top():
    r = [x for x in rows() if x.tool == "sharp"]
    assert pairwise(r, compute_board(r, SPEC, n_boot=200), top=3, n_boot=200) == []


def test_paired_comparisons_of_chosen_pairs_in_a_group_with_holm():
    """The text study's comparisons: chosen (tool, reference, group) pairs on one column, paired over the models of
    the group both scored, Holm-corrected together, verdicts in the board's direction (lower ASR is better)."""
    spec = BoardSpec(task="repair@0.05", title="repair", key="asr", higher_is_better=False, main=["asr"],
                     columns=[Column(name="asr", source="asr", header="ASR after")])
    rng = np.random.default_rng(1)
    r = []
    for i in range(12):
        groups = ["kind=jailbreak" if i < 8 else "kind=rare-token", "crude"]
        base = rng.random() * 0.2
        for tool, v in (("self-distill", base), ("finetune-matched", base + 0.5), ("lat", base + 0.5 + (0.01 if i % 2 else -0.01))):
            r.append(model_row(tool, f"m{i}", spec.task, "asr", v, role="tool" if tool != "finetune-matched" else
                               "baseline", groups=groups))
    items = [("self-distill", "finetune-matched", "kind=jailbreak"), ("lat", "finetune-matched", "kind=jailbreak"),
             ("self-distill", "finetune-matched", "kind=rare-token")]
    better, same, few = paired_comparisons(r, spec, items, "asr", n_boot=500)
    assert better.diff.n == 8 and abs(better.diff.value + 0.5) < 1e-9 and better.verdict == "beats"
    assert same.verdict == "ties" and better.p_holm >= better.p
    assert few.diff.n == 4 and few.verdict == "too few models (n=4)"


def test_shown_columns_add_the_key_per_kind_where_main_names_no_kind_the_board_has():
    main = ["asr", "p_asr", "asr[kind=patch]", "asr[insidious]"]
    image = {"asr", "p_asr", "asr[kind=patch]", "asr[kind=blended]", "asr[insidious]"}
    assert shown_columns(main, "asr", image) == ["asr", "p_asr", "asr[kind=patch]", "asr[insidious]"]
    text = {"asr", "p_asr", "asr[kind=rare-token]", "asr[kind=jailbreak]", "asr[crude]"}
    assert shown_columns(main, "asr", text) == ["asr", "asr[kind=jailbreak]", "asr[kind=rare-token]", "p_asr"]
    assert BoardSpec(task="t", title="t", key="asr", main=main, columns=SPEC.columns).header("auroc[insidious]") == \
        "AUROC insidious-trained"


def _power_script():
    """benchmarks/power.py as a module (it is a script, not part of the package)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("power", Path(__file__).parents[2] / "benchmarks" / "power.py")
    power = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(power)
    return power


def test_power_carries_a_section_only_from_the_same_run():
    power = _power_script()
    previous = {"provenance": {"run_id": "p1", "commit": "abc", "date": "2026-12-01"},
                "digits-bench": {"run_id": "r1", "boards": []},
                "digits-large": {"run_id": "r2", "boards": [], "computed_by": {"run_id": "p0", "commit": "x", "date": "d"}}}
    carried = power._carried(previous, "digits-bench", "r1")
    assert carried["boards"] == [] and carried["computed_by"] == {"run_id": "p1", "commit": "abc", "date": "2026-12-01"}
    assert power._carried(previous, "digits-large", "r2")["computed_by"]["run_id"] == "p0"  # kept from where it began
    assert power._carried(previous, "digits-bench", "another run") is None  # a newer run: never the old numbers
    assert power._carried(previous, "digits-large-repair", "r3") is None


def test_a_stopped_runs_board_keeps_the_models_every_tool_scored():
    power = _power_script()
    r = rows(10)
    stopped = [x for x in r if not (x.model_id == "m9" and x.tool != "sharp")]  # the stop came after sharp scored m9
    kept = power.common_models(stopped + [spec_row(SPEC)])
    assert {x.model_id for x in kept if "role" in x.extra} == {f"m{i}" for i in range(9)}
    assert any("spec" in x.extra for x in kept)  # the board's spec row stays


def test_a_board_refuses_rows_of_two_runs():
    """Rows of two runs (the same tool on overlapping models) would merge into one cell; a board reads one run."""
    import dataclasses

    import pytest

    spec = BoardSpec(task="repair@0.05", title="repair", key="asr", higher_is_better=False, main=["asr"],
                     columns=[Column(name="asr", source="asr", header="ASR after")])
    r = [dataclasses.replace(model_row("lat", f"m{i + shift}", spec.task, "asr", v, role="tool", groups=[]), run_id=run)
         for run, v, shift in (("run-a", 0.9, 0), ("run-b", 0.1, 3)) for i in range(6)]
    with pytest.raises(ValueError, match="one run"):
        compute_board(r, spec, n_boot=100)
    assert compute_board(r[:6], spec, n_boot=100).get("lat").metrics["asr"].value == 0.9  # one run is fine


def test_a_tool_is_not_credited_with_the_models_it_failed_on():
    """n_models (the board's "models" column) counts the models a tool has a value for, as its cells do."""
    spec = BoardSpec(task="repair@0.05", title="repair", key="asr", higher_is_better=False, main=["asr"],
                     columns=[Column(name="asr", source="asr", header="ASR after")])
    r = [model_row("lat", f"m{i}", spec.task, "asr", float("nan") if i < 3 else 0.5, role="tool", groups=[])
         for i in range(8)]
    s = compute_board(r, spec, n_boot=100).get("lat")
    assert s.metrics["asr"].n == 5 and s.n_models == 5


def test_board_auroc_cells_use_the_score_interval_and_count_a_model_scored_per_kind_once():
    """A perfect detector's cell is not [1, 1]; a pooled leave-one-kind-out column, where each clean model is
    scored once per left-out kind (`<id>@without-<kind>`), counts each clean model once."""
    from trojanbench.results.stats import SCORE_METHOD, score_auroc_interval

    spec = BoardSpec(task="detect-model", title="t", key="auroc", main=["auroc"],
                     columns=[Column(name="auroc", source="score", stat="auroc", header="AUROC"),
                              Column(name="auroc_unseen_kind", source="score_unseen_kind", stat="auroc", header="u")])
    r = []
    for i in range(12):  # 6 trojans (3 patch, 3 blend), 6 clean models
        label = int(i < 6)
        r.append(model_row("sharp", f"m{i}", spec.task, "score", label + 0.01 * i, role="tool", label=label,
                           groups=[]))
        if label:
            r.append(model_row("sharp", f"m{i}", spec.task, "score_unseen_kind", 1 + 0.01 * i, role="tool", label=1,
                               groups=[]))
        else:
            for kind in ("patch", "blend"):
                r.append(model_row("sharp", f"m{i}@without-{kind}", spec.task, "score_unseen_kind", 0.01 * i,
                                   role="tool", label=0, groups=[]))
    cells = compute_board(r, spec).scores[0].metrics
    assert cells["auroc"].method == SCORE_METHOD and cells["auroc"].value == 1.0 and cells["auroc"].low < 0.9
    assert (cells["auroc"].low, cells["auroc"].high) == score_auroc_interval(1.0, 6, 6)
    assert (cells["auroc_unseen_kind"].low, cells["auroc_unseen_kind"].high) == score_auroc_interval(1.0, 6, 6)
