"""Paired verdicts among a board's top tools (benchmarks/power.py)."""

import numpy as np

from trojanbench.results.boards import BoardSpec, Column, compute_board, model_row, pairwise

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
