"""`trojanbench survey serve|results`: the human study's two commands, as a typer sub-app that the main CLI
mounts with `app.add_typer(survey_app, name="survey")`. Errors a user can cause raise UserError, which the main
CLI prints on one line and exits 2."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..errors import UserError

survey_app = typer.Typer(no_args_is_help=True, help="Human study: people answer the synthesize track's 8-way "
                                                    "questions in a browser; their accuracy joins the leaderboard.")
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True)


@survey_app.command("serve")
def serve(bank: Annotated[Path, typer.Option("--bank", help="a question bank folder (questions.json + PNGs)")],
          results: Annotated[Path, typer.Option("--results", help="the results store file; answers go into its "
                                                                  "table survey_answers")],
          host: Annotated[str, typer.Option(help="address to listen on; anything but loopback exposes the study "
                                                 "to the network")] = "127.0.0.1",
          port: Annotated[int, typer.Option(help="port (0: any free port)", min=0, max=65535)] = 8765,
          open_browser: Annotated[bool, typer.Option("--open/--no-open", help="open the start page in a browser")]
          = False):
    """Serve the survey until Ctrl-C; every answer is committed to RESULTS as it arrives."""
    from .bank import load_bank
    from .server import SurveyServer

    loaded = load_bank(bank)

    def on_answer(participant: str, question: str, choice: int) -> None:
        console.print(f"answer stored: {participant} {question} -> {'ABCDEFGH'[choice]}", markup=False, highlight=False)

    server = SurveyServer(loaded, results, host=host, port=port, on_answer=on_answer)
    if not server.loopback:
        err_console.print(f"warning: listening on {host}, not loopback: anyone who can reach this machine can open "
                          "the survey and submit answers", markup=False, highlight=False)
    console.print(f"survey {loaded.title!r}: {len(loaded.questions)} questions, answers -> {results}\n"
                  f"open {server.url}  (Ctrl-C to stop)", markup=False, highlight=False)
    sys.stdout.flush()  # the URL must reach a pipe (a log, a script waiting for it) before we block
    if open_browser:
        import webbrowser

        webbrowser.open(server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    console.print("survey stopped; answers are in " + str(results), markup=False, highlight=False)


@survey_app.command("results")
def results_cmd(bank: Annotated[Path, typer.Option("--bank", help="the question bank the answers were given to")],
                results: Annotated[Path, typer.Option("--results", help="the results store holding the answers")],
                seed: Annotated[int, typer.Option(min=0, help="seed of the bootstrap resampling")] = 0,
                n_boot: Annotated[int, typer.Option(help="bootstrap resamples", min=1)] = 1000):
    """Score the stored answers per tool, print them and write them into RESULTS for the report.

    Human accuracy, the judge's accuracy on the same questions and their agreement, with 95% intervals from a
    two-way cluster bootstrap over participants and trojans; written as a run of its own (kind `survey`)."""
    from .bank import load_bank
    from .results import fold_answers

    loaded = load_bank(bank)
    if results.is_dir():
        raise UserError(f"results store {results} is a folder; give a file path such as results.sqlite")
    if not results.is_file():
        raise UserError(f"no results store at {results}; run `trojanbench survey serve --results {results}` first")
    rows = fold_answers(loaded, results, n_boot=n_boot, seed=seed)
    if not rows:
        raise UserError(f"{results} holds no answers to the bank {bank} (key {loaded.key}); run "
                        "`trojanbench survey serve` and have people answer first")
    t = Table(title=f"human study: {loaded.title}", caption="95% two-way cluster bootstrap over participants and trojans "
              "(none with fewer than 5 of either); chance (1/k per question, k its number of options) is mc_chance_human")
    for col in ("tool", "metric", "value", "n"):
        t.add_column(col, justify="left" if col in ("tool", "metric") else "right")
    from ..results.stats import Estimate

    for r in rows:
        est = Estimate(float("nan") if r.value is None else r.value, r.extra["low"], r.extra["high"], r.extra["n"])
        value = f"{int(est.value)}" if r.metric.startswith("human_") else str(est)
        t.add_row(escape(r.tool), escape(r.metric), value, str(est.n))  # escaped: `[kind=patch]` is not markup
    console.print(t)
    console.print(f"{len(rows)} rows written to {results} as a survey run (`trojanbench report {results}` shows it)",
                  markup=False, highlight=False)
