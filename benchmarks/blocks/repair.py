# ruff: noqa: F821  (the helpers are names of render_docs, which execs this file)
# Measured blocks of docs/repair.md (run inside benchmarks/render_docs.py's namespace: `block`, `cell`, `fmt`,
# `verdict`, `provenance_line` come from there). Every number comes from the source JSON; none is typed here.


def _repair_kind_table(board: dict) -> str:
    """ASR after repair (all models and per trigger kind), clean cost and robust accuracy, with the verdict."""
    tools = board["tools"]
    kinds = sorted({k[len("asr[kind="):-1] for t in tools for k in t["metrics"] if k.startswith("asr[kind=")})
    ref = next((t for t in tools if t["tool"] == board.get("reference")), tools[0])

    def n_of(key):
        m = ref["metrics"].get(key) or {}
        return f" (n={m['n']})" if "n" in m else ""

    head = ["tool", "ASR after" + n_of("asr"), *[f"ASR {k}" + n_of(f"asr[kind={k}]") for k in kinds],
            "clean cost", "robust acc", f"vs {board['reference']}" if board.get("reference") else "verdict"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for t in [t for t in tools if "asr" in t["metrics"]]:  # the clean-twin control has no ASR after repair
        m = t["metrics"]
        kind_cells = [fmt((m.get(f"asr[kind={k}]") or {}).get("value")) for k in kinds]
        lines.append("| " + " | ".join([f"`{t['tool']}`", cell(m.get("asr")), *kind_cells, cell(m.get("clean_cost")),
                                        cell(m.get("robust_acc")), verdict(t)]) + " |")
    return "\n".join(lines) + old_verdicts(board)


@block("repair-matched-dev", "repair_matched_dev.json")
def _repair_matched_dev(d):
    data = d["repair_matched_dev.json"]
    board = data["board"]
    return (f"{board['title']}. {board.get('population', '')}\n\n" + _repair_kind_table(board) + "\n\n"
            + provenance_line(data, "repair_matched_dev.json"))


@block("repair-holds", "repair_holds.json")
def _repair_holds(d):
    data = d["repair_holds.json"]
    board = data["board"]
    head = ["tool", "ASR after", "P-ASR", "probe AUROC", "robust acc", "DER", "clean cost", "target-class cost",
            "removed, came back", f"vs {board['reference']}" if board.get("reference") else "verdict"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for t in board["tools"]:
        m = t["metrics"]
        cb = data["came_back"].get(t["tool"])
        back = f"{cb['came_back']} of {cb['removed']}" if cb else "-"
        lines.append("| " + " | ".join([f"`{t['tool']}`", cell(m.get("asr")), cell(m.get("p_asr")),
                                        cell(m.get("probe_auroc")), cell(m.get("robust_acc")), cell(m.get("der")),
                                        cell(m.get("clean_cost")), cell(m.get("target_class_cost")), back,
                                        verdict(t)]) + " |")
    q = data["question"]
    answer = []
    for metric, c in q["comparisons"].items():
        answer.append(f"{metric}: {c['diff']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}] (n={c['n']}, Holm p={c['p_holm']:.2g}): "
                      f"{c['verdict']}")
    return ("\n".join(lines) + old_verdicts(board) + f"\n\n{board['population']} Clean budget {data['budget']:.0%}. "
            f"**{q['a']} against {q['b']}** ({q['what']}; negative is better for {q['a']}): " + "; ".join(answer) + ". "
            f"Removed: ASR below {data['removed_below']:.0%}; came back: P-ASR above {data['came_back_above']:.0%}. "
            f"{provenance_line(data, 'repair_holds.json')}\n")


@block("board-large-repair", "power.json")
def _board_large_repair(d):
    """The large zoo's repair board (its run read back by benchmarks/power.py): in full, then ASR after repair per
    trigger kind."""
    data = d["power.json"]
    large = data["digits-large-repair"]
    out = f"Run `{large['run_id']}` of the repair track ({large['run_status']}, {large['jobs_finished']} jobs finished)."
    if large["run_status"] != "complete":
        out += (" The run was stopped before all its jobs had finished (the jobs run trojan by trojan, in the zoo's "
                "order, which interleaves the trigger kinds): the board covers the held-out trojans that every method "
                "had repaired by then, the count in its `n` columns.")
    board = next(b["board"] for b in large["boards"] if b["task"].startswith("repair"))
    return (out + f"\n\n#### {board['title']}\n\nRanked by `{board['key']}` (lower is better). {board['population']}"
            + (" (planned; `models`: the trojans each method was scored on)" if large["run_status"] != "complete" else "")
            + "\n\n" + board_table(board, shown(board), models=True)
            + "\n\nASR after repair per trigger kind (n: trojans of that kind):\n\n" + _repair_kind_table(board) + "\n\n"
            + provenance_line(data, "power.json"))
