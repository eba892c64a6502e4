# ruff: noqa: F821  (the helpers are names of render_docs, which execs this file)
# Measured blocks of the text zoo (`sst2-bench`; README.md, docs/detect.md, docs/diagnose.md), from
# benchmarks/end_to_end.py --config sst2-bench --no-warm. Every number comes from the source JSON.

TEXT_BOARD, TEXT_TIMES = "board_sst2-bench.json", "end_to_end_sst2-bench.json"


@block("text-end-to-end", TEXT_TIMES, TEXT_BOARD)
def _text_end_to_end(d):
    data, board = d[TEXT_TIMES], d[TEXT_BOARD]
    cold = data["runs"]["cold"]
    lines = ["| run | total (s) | " + " | ".join(cold["stages_s"]) + " |", "|---|---|" + "---|" * len(cold["stages_s"]),
             f"| cold | {cold['total_s']:.1f} | " + " | ".join(f"{v:.1f}" for v in cold["stages_s"].values()) + " |"]
    skipped = board.get("skipped", {})
    if skipped:
        lines += ["", "Skipped: " + "; ".join(f"{t} ({why})" for t, why in skipped.items()) + "."]
    return "\n".join(lines) + "\n\n" + provenance_line(data, TEXT_TIMES)


@block("text-boards", TEXT_BOARD)
def _text_boards(d):
    data = d[TEXT_BOARD]
    return boards_summary(data) + "\n\n" + provenance_line(data, TEXT_BOARD) + "\n\n" + boards_full(data)
