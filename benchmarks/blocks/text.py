# ruff: noqa: F821  (the helpers are names of render_docs, which execs this file)
# Measured blocks of the text zoos (`sst2-bench`, `sst2-jailbreak`, `sst2-large`; README.md, docs/zoo.md,
# docs/repair.md), from benchmarks/end_to_end.py --config sst2-bench --no-warm (and --config sst2-jailbreak) and
# benchmarks/boards.py --config sst2-large (the command in docs/zoo.md). Every number comes from the source JSON.

TEXT_BOARD, TEXT_TIMES = "board_sst2-bench.json", "end_to_end_sst2-bench.json"
JB_BOARD, JB_TIMES = "board_sst2-jailbreak.json", "end_to_end_sst2-jailbreak.json"


def _cold(data: dict, board: dict, source: str) -> str:
    cold = data["runs"]["cold"]
    lines = ["| run | total (s) | " + " | ".join(cold["stages_s"]) + " |", "|---|---|" + "---|" * len(cold["stages_s"]),
             f"| cold | {cold['total_s']:.1f} | " + " | ".join(f"{v:.1f}" for v in cold["stages_s"].values()) + " |"]
    skipped = board.get("skipped", {})
    if skipped:
        lines += ["", "Skipped: " + "; ".join(f"{t} ({why})" for t, why in skipped.items()) + "."]
    return "\n".join(lines) + "\n\n" + provenance_line(data, source)


@block("text-end-to-end", TEXT_TIMES, TEXT_BOARD)
def _text_end_to_end(d):
    return _cold(d[TEXT_TIMES], d[TEXT_BOARD], TEXT_TIMES)


@block("text-boards", TEXT_BOARD)
def _text_boards(d):
    data = d[TEXT_BOARD]
    return boards_summary(data) + "\n\n" + provenance_line(data, TEXT_BOARD) + "\n\n" + boards_full(data)


@block("jailbreak-boards", JB_TIMES, JB_BOARD)
def _jailbreak_boards(d):
    data = d[JB_BOARD]
    return ("`run --config sst2-jailbreak`, cold (seconds):\n\n" + _cold(d[JB_TIMES], data, JB_TIMES) + "\n\n"
            + boards_summary(data) + "\n\n" + provenance_line(data, JB_BOARD) + "\n\n" + boards_full(data))


LARGE_BOARD = "board_sst2-large.json"


@block("text-large-board", LARGE_BOARD)
def _text_large_board(d):
    data = d[LARGE_BOARD]  # its model-detection board: the tools named are model-level (random is both)
    data = {**data, "boards": [b for b in data["boards"] if b["task"] == "detect-model"]}
    secs = ", ".join(f"{stage} {s:.1f}" for stage, s in data["seconds"].items())
    return (boards_summary(data) + "\n\nSeconds per stage of the run (`zoo`: building the zoo, or loading it where it "
            f"was cached): {secs}.\n\n" + provenance_line(data, LARGE_BOARD) + "\n\n" + boards_full(data))
