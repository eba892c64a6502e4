"""Regenerate every measured block of README.md and docs/*.md from the JSON files under benchmarks/results/.

A measured block sits between `<!-- measured:NAME -->` and `<!-- /measured:NAME -->`; its text is what the renderer
NAME below makes of its source files, nothing typed by hand. tests/test_docs_numbers.py fails when a block differs
from its rendering, when a number in a block is not in its sources, or when a source lacks its provenance.

    .venv/bin/python benchmarks/render_docs.py          # rewrite the blocks
    .venv/bin/python benchmarks/render_docs.py --check  # exit 1 if any block is stale
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
BLOCK = re.compile(r"(<!-- measured:(?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /measured:(?P=name) -->)", re.S)
PROVENANCE_FIELDS = ("run_id", "commit", "config", "cores", "torch_threads", "date")


def load(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def fmt(x, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def cell(m: dict | None, digits: int = 3) -> str:
    """A board cell as the terminal prints it: value [low, high], or value (n=3) below 5 units."""
    if not m or m.get("value") is None:
        return "-"
    if "low" in m:
        return f"{fmt(m['value'], digits)} [{fmt(m['low'], digits)}, {fmt(m['high'], digits)}]"
    return f"{fmt(m['value'], digits)} (n={m['n']})"


def verdict(tool: dict) -> str:
    v = tool["verdict"]
    cmp = tool.get("vs_reference")
    if cmp and cmp.get("p_holm") is not None and v in ("beats", "ties", "worse"):
        return f"{v} ({cmp['diff']['value']:+.3f}, p={cmp['p_holm']:.2g})"
    return v


OLD_TEST = ("are from before commit 25c936e: their p-values are a paired bootstrap's (too small on zoos of 5 to 16 "
            "models; a sign-flip permutation test since), not re-run yet")


def old_test(board: dict) -> bool:
    """A board stored before the verdicts of mean columns took a sign-flip test (its file has no `verdict_test`)
    whose ranking column is such a mean (its cells are not a model-level AUROC's stratified bootstrap; a sample
    detection board's `auroc` is a mean over models). power.json's summaries carry their board under `board`."""
    if "verdict_test" in board:
        return False
    full = board.get("board", board)
    return all((t.get("metrics") or {}).get(full["key"], {}).get("method") != "stratified bootstrap"
               for t in full["tools"])


def old_verdicts(board: dict) -> str:
    """Sentences under a board whose verdicts are of the old test (`old_test`) or whose intervals are the old
    percentile bootstraps' (`old_interval`), else ""."""
    return ((f"\n\nThe verdicts of this board (`{board['key']}`) {OLD_TEST}." if old_test(board) else "")
            + (f"\n\nThe intervals of this board {OLD_INTERVAL}." if old_interval(board) else ""))


OLD_INTERVAL = ("are from before commit ef882c0: percentile bootstraps, which fall short of 95% coverage on a few "
                "models, far short for an AUROC near 1 (docs/leaderboards.md, \"Intervals\": a score interval for "
                "AUROC and an expanded percentile bootstrap for means since), not re-run yet")
OLD_METHODS = ("stratified bootstrap", "bootstrap")  # a model-level AUROC's and a mean's, before ef882c0


def old_interval(board: dict) -> bool:
    """A board whose cells were given the old percentile bootstrap intervals (`OLD_METHODS`), as every board
    stored before the score interval for AUROC (`stats.auroc_estimate`) and the expanded one for means."""
    full = board.get("board", board)
    return any(m.get("method") in OLD_METHODS for t in full["tools"] for m in (t.get("metrics") or {}).values())


def board_table(board: dict, columns: list[tuple[str, str]], models: bool = False) -> str:
    """A markdown table of one stored board: rank, tool, the given cells, (with `models`) the models each tool was
    scored on, verdict (and a sentence under it if the verdicts are of the old test, `old_verdicts`)."""
    head = ["rank", "tool", *[h for _, h in columns], *(["models"] if models else []),
            f"vs {board['reference']}" if board.get("reference") else "verdict"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for rank, t in enumerate(board["tools"], 1):
        cells = [cell(t["metrics"].get(m)) for m, _ in columns] + ([str(t["n_models"])] if models else [])
        lines.append("| " + " | ".join([str(rank), t["tool"], *cells, verdict(t)]) + " |")
    return "\n".join(lines) + old_verdicts(board)


def provenance_line(data: dict, source: str) -> str:
    p = data["provenance"]
    commit = p.get("commit") or "?"
    commit = commit[:12] + ("-dirty" if commit.endswith("-dirty") else "")
    return (f"Source: `benchmarks/results/{source}` (run `{p['run_id']}`, commit `{commit}`, "
            f"{p['cores']} cores, {p['torch_threads']} torch threads, {p['date'][:10]}).")


# ---- the blocks ---------------------------------------------------------------------------------------------
# NAME -> (source files, renderer(data by source) -> markdown)
RENDERERS: dict[str, tuple[list[str], Callable[[dict], str]]] = {}


def block(name: str, *sources: str):
    def deco(fn):
        RENDERERS[name] = (list(sources), fn)
        return fn

    return deco


def pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _value(t: dict, key: str):
    return (t["metrics"].get(key) or {}).get("value")


def boards_summary(data: dict) -> str:
    """One line per board: the population, the best tool (the top-ranked one the board does not disqualify) and the
    strongest baseline on the ranking column, and how many tools beat / tie / are worse than that baseline (paired
    bootstrap, Holm-corrected), and how many the board disqualified."""
    lines = ["| board | ranked by | held-out models | best tool | strongest baseline | tools: beats / ties / worse |",
             "|---|---|---|---|---|---|"]
    for b in data["boards"]:
        tools = [t for t in b["tools"] if t["role"] == "tool"]
        ref = next((t for t in b["tools"] if t["tool"] == b.get("reference")), None)
        best = next((t for t in tools if t["verdict"] != "disqualified"), None)  # a disqualified tool is never best
        counts = [sum(t["verdict"] == v for t in tools) for v in ("beats", "ties", "worse")]
        out = sum(t["verdict"] == "disqualified" for t in tools)
        few = sum(t["verdict"].startswith("too few models") for t in tools)
        extra = ([f"{out} disqualified"] if out else []) + ([f"{few} too few models to tell"] if few else [])
        models = b.get("population", "").partition("split: ")[2].partition(" models")[0] or "-"
        lines.append(f"| {b['title'].split(' (')[0]} | `{b['key']}` | {models} | "
                     + (f"{best['tool']} {cell(best['metrics'].get(b['key']))}" if best else "-") + " | "
                     + (f"{ref['tool']} {cell(ref['metrics'].get(b['key']))}" if ref else "-") + " | "
                     + " / ".join(map(str, counts)) + (f" ({'; '.join(extra)})" if extra else "") + " |")
    winners = [f"{t['tool']} ({b['task']})" for b in data["boards"] for t in b["tools"] if t["verdict"] == "beats"]
    lines += ["", "Tools that beat the strongest baseline of their board: " + (", ".join(winners) or "none") + "."]
    if old := [b["task"] for b in data["boards"] if old_test(b)]:
        lines[-1] += f" The verdicts of {', '.join(old)} {OLD_TEST}."
    if old := [b["task"] for b in data["boards"] if old_interval(b)]:
        lines[-1] += f" The intervals of {', '.join(old)} {OLD_INTERVAL}."
    return "\n".join(lines)


def shown(board: dict) -> list[tuple[str, str]]:
    """A stored board's main columns as the report shows them (`results.boards.shown_columns`: those some tool has,
    and the key column per trigger kind where no main column is split by kind), with their headers; a crude /
    insidious group is named as `BoardSpec.header` names it now (how the trojan was trained)."""
    from trojanbench.results.boards import shown_columns

    present = {m for t in board["tools"] for m, e in t["metrics"].items() if e.get("value") is not None}
    headers = dict(map(tuple, board.get("main", [])))
    key_header = headers.get(board["key"], board["key"])

    def header(a: str) -> str:
        group = a.partition("[")[2].rstrip("]")
        text = headers.get(a) or f"{key_header} {group.removeprefix('kind=')}"
        if group in ("crude", "insidious") and text.endswith(" " + group):
            text += "-trained"
        return text

    return [(a, header(a)) for a in shown_columns([a for a, _ in board.get("main", [])], board["key"], present)]


def boards_full(data: dict) -> str:
    out = []
    for b in data["boards"]:
        out += [f"#### {b['title']}", "", f"Ranked by `{b['key']}` ({'higher' if b['higher_is_better'] else 'lower'} "
                f"is better). {b.get('population', '')}", ""]
        out += [board_table(b, shown(b)), ""]
    return "\n".join(out)


@block("boards", "board_digits-bench.json")
def _boards(d):
    data = d["board_digits-bench.json"]
    return boards_summary(data) + "\n\n" + provenance_line(data, "board_digits-bench.json")


def _coverage_table(part: dict, rows: list[tuple], label: Callable[[dict], tuple], columns: list, column_of,
                    methods: tuple[str, str], heads: list[str], column_head: Callable) -> list[str]:
    lines = ["| " + " | ".join(heads) + " | " + " | ".join(column_head(c) for c in columns) + " |",
             "|" + "---|" * (len(heads) + len(columns))]
    for row in rows:
        found = {column_of(c): c for c in part["cells"] if label(c) == row}
        lines.append("| " + " | ".join(map(str, row)) + " | " + " | ".join(
            f"{fmt(found[c][methods[0]]['coverage'], 2)} / {fmt(found[c][methods[1]]['coverage'], 2)}"
            for c in columns) + " |")
    s = part["summary"]
    lines += ["", f"Over all {s[methods[1]]['cells']} cells the lowest coverage is "
              f"{fmt(s[methods[0]]['min_coverage'], 3)} / {fmt(s[methods[1]]['min_coverage'], 3)}, the mean "
              f"{fmt(s[methods[0]]['mean_coverage'], 3)} / {fmt(s[methods[1]]['mean_coverage'], 3)}, and "
              f"{s[methods[0]]['cells_below_0.93']} / {s[methods[1]]['cells_below_0.93']} cells fall below 0.93."]
    return lines


@block("interval-coverage", "interval_coverage.json")
def _interval_coverage(d):
    """Coverage of the boards' old and new intervals: AUROC by class sizes and true AUROC, means by models and
    distribution."""
    data = d["interval_coverage.json"]
    a, m = data["auroc"], data["mean"]
    thetas = sorted({c["theta"] for c in a["cells"]})
    rows = sorted({(f"{c['m']} + {c['n']}", c["shape"]) for c in a["cells"]}, key=lambda r: (int(r[0].split()[0]), r[1]))
    lines = [f"**AUROC**: each cell the share of {data['sims_per_cell']} draws whose 95% interval held the true "
             "AUROC, percentile bootstrap (before) / score interval (now).", ""]
    lines += _coverage_table(a, rows, lambda c: (f"{c['m']} + {c['n']}", c["shape"]), thetas, lambda c: c["theta"],
                             ("stratified bootstrap", "score"), ["models per class", "scores"], lambda t: f"AUROC {t:g}")
    sizes = sorted({c["n"] for c in m["cells"]})
    shapes = sorted({c["shape"] for c in m["cells"]})
    lines += ["", f"**Mean**: each cell the share of {data['sims_per_cell']} draws whose 95% interval held the true "
              "mean, percentile bootstrap (before) / expanded percentile bootstrap (now).", ""]
    lines += _coverage_table(m, [(s,) for s in shapes], lambda c: (c["shape"],), sizes, lambda c: c["n"],
                             ("percentile", "expanded"), ["values"], lambda n: f"{n} models")
    return "\n".join(lines) + "\n\n" + provenance_line(data, "interval_coverage.json")


@block("leaderboards", "board_digits-bench.json")
def _leaderboards(d):
    data = d["board_digits-bench.json"]
    return provenance_line(data, "board_digits-bench.json") + "\n\n" + boards_full(data)


@block("leaderboards-eval2", "board_digits-eval2.json")
def _leaderboards_eval2(d):
    data = d["board_digits-eval2.json"]
    return provenance_line(data, "board_digits-eval2.json") + "\n\n" + boards_full(data)


@block("carry-over", "carry_over.json")
def _carry_over(d):
    data = d["carry_over.json"]
    lines = ["| board | tools in both | Kendall tau | p | verdicts that changed (default -> eval2) |", "|---|---|---|---|---|"]
    for b in data["boards"]:
        changes = ", ".join(f"{c['tool']} {c['default']} -> {c['eval2']}" for c in b["verdict_changes"]) or "none"
        lines.append(f"| {b['task']} | {b['n_tools']} | {fmt(b['kendall_tau'], 2)} | {fmt(b['p_value'], 3)} | {changes} |")
    if old := [b["task"] for b in data["boards"] if old_test(b)]:
        lines += ["", f"The verdicts of {', '.join(old)} in both files {OLD_TEST}."]
    return "\n".join(lines) + "\n\n" + provenance_line(data, "carry_over.json")


def _timings(data: dict, source: str) -> str:
    lines = ["| run | total (s) | " + " | ".join(data["runs"]["cold"]["stages_s"]) + " |",
             "|---|---|" + "---|" * len(data["runs"]["cold"]["stages_s"])]
    for label, r in data["runs"].items():
        lines.append(f"| {label} | {r['total_s']:.1f} | " + " | ".join(f"{v:.1f}" for v in r["stages_s"].values()) + " |")
    if data.get("cold_runs", 1) > 1:  # `end_to_end.py --cold-runs N`: N cold runs, each from its own empty cache
        lines.append(f"\nCold, over {data['cold_runs']} runs from an empty cache each: median {data['cold_median_s']:.1f} s, "
                     f"slowest {data['cold_max_s']:.1f} s.")
    return "\n".join(lines) + "\n\n" + provenance_line(data, source)


@block("end-to-end", "end_to_end.json")
def _end_to_end(d):
    return _timings(d["end_to_end.json"], "end_to_end.json")


@block("end-to-end-full", "end_to_end_digits-bench.json")
def _end_to_end_full(d):
    return _timings(d["end_to_end_digits-bench.json"], "end_to_end_digits-bench.json")


@block("implant-kinds", "implant_kinds.json")
def _implant_kinds(d):
    data = d["implant_kinds.json"]
    lines = ["| model | clean accuracy | attack success rate |", "|---|---|---|"]
    for name, m in data["models"].items():
        lines.append(f"| {name} | {pct(m['clean_accuracy'])} | {pct(m.get('attack_success_rate'))} |")
    return "\n".join(lines) + "\n\n" + provenance_line(data, "implant_kinds.json")


@block("judge-ceiling", "judge_ceiling.json")
def _judge_ceiling(d):
    data = d["judge_ceiling.json"]
    rows = [("held-out trojans", data)] + ([("all trojans of the zoo", data["all_splits"])] if "all_splits" in data else [])
    kinds = sorted({k for _, part in rows for k in part["perfect_tool_accuracy"]} - {"overall"}) + ["overall"]
    lines = ["| trojans | accuracy of | " + " | ".join(kinds) + " |", "|---|---|" + "---|" * len(kinds)]
    for label, part in rows:
        for field, name in (("perfect_tool_accuracy", "perfect tool"), ("random_prior_accuracy", "random prior"),
                            ("chance", "chance")):
            cells = [part[field].get(k) for k in kinds]
            lines.append(f"| {label} | {name} | " + " | ".join(
                "-" if c is None else f"{c['value']:.3f} (n={c['n']})" for c in cells) + " |")
    return "\n".join(lines) + "\n\n" + provenance_line(data, "judge_ceiling.json")


def _determinism(data: dict, keep=lambda what: True) -> str:
    lines = ["| arch | comparison | result |", "|---|---|---|"]
    for arch, part in data["archs"].items():
        for what, result in part["summary"].items():
            if keep(what):
                lines.append(f"| {arch} | {what} | {result.replace('|diff|', 'abs diff')} |")
    return "\n".join(lines) + "\n\n" + provenance_line(data, "zoo_determinism.json")


@block("zoo-determinism", "zoo_determinism.json")
def _zoo_determinism(d):
    return _determinism(d["zoo_determinism.json"])


@block("zoo-determinism-summary", "zoo_determinism.json")
def _zoo_determinism_summary(d):
    """The zoo trainer's own setting (oneDNN off): chunk sizes and thread counts."""
    return _determinism(d["zoo_determinism.json"], lambda what: "oneDNN off" in what and "plain loop" not in what)


@block("zoo-throughput", "zoo_throughput.json")
def _zoo_throughput(d):
    data = d["zoo_throughput.json"]
    peak = data["gemm_peak"]
    machine = data.get("machine_gemm_peak")  # the all-core peak (CPU runs; files before it have one peak only)
    threads = peak.get("threads", data["threads"])
    plural = "s" if threads > 1 else ""
    extra = f" fraction of the machine's ({machine['threads']} threads) |" if machine else ""
    lines = [f"| trainer | seconds | models / second | achieved GFLOP/s | fraction of the GEMM peak ({threads} thread{plural}) |"
             + extra + " mean clean accuracy | ASR min / median |",
             "|---|---|---|---|---|" + ("---|" if machine else "") + "---|---|"]
    for name, label in (("serial", "plain loop (`serial`)"), ("batched", "many at once (`batched`)")):
        r = data[name]
        lines.append(f"| {label} | {r['seconds']:.1f} | {r['models_per_second']:.3f} | "
                     f"{r['achieved_gflops_per_second']:.2f} | {r['fraction_of_gemm_peak']:.3f} | "
                     + (f"{r['fraction_of_machine_gemm_peak']:.3f} | " if machine else "")
                     + f"{r['mean_clean_accuracy']:.4f} | {r['asr_min']:.3f} / {r['asr_median']:.3f} |")
    peaks = f"GEMM peak {max(peak['by_size'].values()):.1f} GFLOP/s on {threads} thread{plural}" + (
        f", {max(machine['by_size'].values()):.1f} GFLOP/s on {machine['threads']}" if machine else "")
    return ("\n".join(lines) + f"\n\n{data['serial']['models']} models each way, each trainer on {data['threads']} torch "
            f"thread{'s' if data['threads'] > 1 else ''}; batched / loop throughput {data['speedup_batched_over_loop']:.3f}; "
            f"{peaks} (the best float32 square matmul; each size's rate and the training FLOPs per step and per model "
            f"are in the file).\n\n" + provenance_line(data, "zoo_throughput.json"))


@block("vs-art", "vs_art.json")
def _vs_art(d):
    data = d["vs_art.json"]
    sp, ac = data["summary"]["spectral"], data["summary"]["activation_clustering"]
    lines = ["| detector | ours: ranking AUROC | ART: ranking AUROC | ART's decisions: TPR / FPR | ours: TPR at ART's FPR |"
             " seconds per model: ours / ART |", "|---|---|---|---|---|---|"]
    op = sp["at_art_operating_point"]
    lines.append(f"| spectral signatures | {fmt(sp['ranking_auroc']['ours'])} | {fmt(sp['ranking_auroc']['art'])} | "
                 f"{fmt(op['art_tpr'])} / {fmt(op['art_fpr'])} | {fmt(op['ours_tpr_at_art_fpr'])} | "
                 f"{fmt(sp['seconds_per_model']['ours'], 2)} / {fmt(sp['seconds_per_model']['art'], 2)} |")
    for key, label in (("art_default", "ART defaults"), ("art_paper_like", "ART, paper-like settings")):
        a = ac[key]
        lines.append(f"| activation clustering vs {label} | {fmt(ac['ranking_auroc_ours'])} | - (decisions only) | "
                     f"{fmt(a['art_tpr'])} / {fmt(a['art_fpr'])} | {fmt(a['ours_tpr_at_art_fpr'])} | "
                     f"{fmt(ac['seconds_per_model']['ours'], 2)} / {fmt(ac['seconds_per_model'][key], 2)} |")
    return "\n".join(lines) + "\n\n" + provenance_line(data, "vs_art.json")


@block("cifar10", "cifar10_patch.json")
def _cifar10(d):
    data = d["cifar10_patch.json"]
    sec = data["seconds"]
    return ("| model | epochs | clean accuracy | attack success rate | train (s) | end to end (s) | floors met |\n"
            "|---|---|---|---|---|---|---|\n"
            f"| {data['arch']} width {data['width']} | {data['train']['epochs']} | {pct(data['clean_accuracy'])} | "
            f"{pct(data['attack_success_rate'])} | {sec['train']:.1f} | {sec['total']:.1f} | "
            f"{'yes' if data['meets_floors'] else 'no'} |\n\n" + provenance_line(data, "cifar10_patch.json"))


def _track_boards(prefix: str, source: str):
    def fn(d):
        data = d[source]
        picked = {**data, "boards": [b for b in data["boards"] if b["task"].split("@")[0] in prefix.split(",")]}
        return provenance_line(data, source) + "\n\n" + boards_full(picked)
    return fn


# `board-<track>`: the digits-bench zoo's boards of one track (docs/<track>.md); `board2-<track>`: the second zoo's
for _name, _tasks in {"detect": "detect-model,detect-samples", "diagnose": "diagnose-attribution",
                      "synthesize": "synthesize,synthesize-mc", "repair": "repair", "edit": "edit"}.items():
    block(f"board-{_name}", "board_digits-bench.json")(_track_boards(_tasks, "board_digits-bench.json"))
    block(f"board2-{_name}", "board_digits-eval2.json")(_track_boards(_tasks, "board_digits-eval2.json"))

# more renderers, one file per document, in benchmarks/blocks/*.py: each is run in this module's namespace, so it
# uses `block`, `load`, `cell`, `fmt`, `pct`, `board_table`, `provenance_line` directly
for _path in sorted((Path(__file__).resolve().parent / "blocks").glob("*.py")):
    exec(compile(_path.read_text(), str(_path), "exec"), globals())  # noqa: S102


def missing_sources(name: str) -> list[str]:
    return [s for s in RENDERERS[name][0] if not (RESULTS / s).is_file()]


def render(name: str) -> str:
    """The block's text; a block whose source file does not exist yet says so (a placeholder holds no number)."""
    sources, fn = RENDERERS[name]
    if missing := missing_sources(name):
        return ("*Not measured with recorded provenance yet: " + ", ".join(f"`benchmarks/results/{s}`" for s in missing)
                + " does not exist; the text above names the script that writes it.*\n")
    return fn({s: load(s) for s in sources}).rstrip("\n") + "\n"


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def blocks_in(path: Path) -> list[tuple[str, str]]:
    return [(m["name"], m["body"]) for m in BLOCK.finditer(path.read_text())]


def rewrite(path: Path) -> bool:
    text = path.read_text()

    def sub(m):
        if m["name"] not in RENDERERS:
            raise SystemExit(f"{path.name}: unknown measured block {m['name']!r}")
        return m.group(1) + render(m["name"]) + m.group(4)

    new = BLOCK.sub(sub, text)
    if new != text:
        path.write_text(new)
        return True
    return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only report stale blocks (exit 1 if any)")
    args = ap.parse_args()
    stale = []
    for doc in documents():
        for name, body in blocks_in(doc):
            if name not in RENDERERS:
                stale.append(f"{doc.name}: unknown block {name}")
            elif body != render(name):
                stale.append(f"{doc.name}: {name}")
        if not args.check:
            rewrite(doc)
    if args.check and stale:
        print("stale measured blocks:\n  " + "\n  ".join(stale))
        sys.exit(1)
    print("checked" if args.check else "rewrote", sum(len(blocks_in(d)) for d in documents()), "blocks")


if __name__ == "__main__":
    from trojanbench.errors import script_main
    script_main(main)
