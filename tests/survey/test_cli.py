"""`survey serve` and `survey results` as a user meets them: mounted into a typer app the way the main CLI
mounts it (`app.add_typer(survey_app, name="survey")`), user errors are UserErrors, serve blocks until Ctrl-C
and stops cleanly. Once trojanbench.cli mounts the sub-app, the last test also checks the real command line."""

import os
import signal
import socket
import subprocess
import sys
import urllib.request
from urllib.parse import urlencode

import pytest
import typer
from typer.testing import CliRunner

from trojanbench.errors import UserError
from trojanbench.survey.answers import AnswerStore
from trojanbench.survey.cli import survey_app

MOUNTED = ("import typer; from trojanbench.survey.cli import survey_app; app = typer.Typer(); "
           "app.add_typer(survey_app, name='survey'); app()")


@pytest.fixture(scope="module")
def cli():
    app = typer.Typer()
    app.add_typer(survey_app, name="survey")
    runner = CliRunner()
    return lambda *args: runner.invoke(app, ["survey", *map(str, args)])


def user_error(result, fragment):
    assert isinstance(result.exception, UserError), (result.exception, result.output)
    assert fragment in str(result.exception)


def test_user_errors(cli, tiny_bank, tmp_path):
    user_error(cli("serve", "--bank", tmp_path / "missing", "--results", tmp_path / "r.sqlite"), "no question bank")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "questions.json").write_text('{"version": 1, "questions": [{"id": "q1"}]}')
    user_error(cli("serve", "--bank", tmp_path / "bad", "--results", tmp_path / "r.sqlite"), "not a valid question bank")
    user_error(cli("serve", "--bank", tiny_bank.folder, "--results", tmp_path), "is a folder")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        user_error(cli("serve", "--bank", tiny_bank.folder, "--results", tmp_path / "r.sqlite", "--port",
                       s.getsockname()[1]), "cannot listen")
    user_error(cli("results", "--bank", tiny_bank.folder, "--results", tmp_path / "none.sqlite"), "no results store")
    user_error(cli("results", "--bank", tiny_bank.folder, "--results", tmp_path), "is a folder")
    user_error(cli("results", "--bank", tiny_bank.folder, "--results", tmp_path / "r.sqlite"), "holds no answers")
    assert cli("serve", "--bank", tiny_bank.folder, "--results", tmp_path / "r.sqlite", "--port", 70000).exit_code == 2


def test_results_prints_and_writes(cli, tiny_bank, tmp_path):
    results = tmp_path / "r.sqlite"
    with AnswerStore(results) as store:
        for i, q in enumerate(tiny_bank.questions):
            store.add(tiny_bank.key, "p1", q.id, q.answer if i else (q.answer + 1) % 8, q.answer, 500)
    r = cli("results", "--bank", tiny_bank.folder, "--results", results, "--n-boot", 100)
    assert r.exit_code == 0, r.output
    assert "mc_accuracy_human" in r.output and "judge_human_agreement" in r.output and "rows written" in r.output
    assert "0.667" in r.output  # 2 of the 3 answers right
    # the per-kind and per-group metrics keep their names (rich read `[kind=patch]` as markup and dropped it)
    assert "mc_accuracy_human[kind=patch]" in r.output and "mc_accuracy_human[crude]" in r.output


def test_serve_blocks_until_ctrl_c_and_keeps_answers(tiny_bank, tmp_path):
    results = tmp_path / "r.sqlite"
    # SIGINT at its default in the child whatever the suite was started from (a background job of a non-interactive
    # shell ignores SIGINT, and an ignored signal stays ignored across exec: the server would never see Ctrl-C)
    proc = subprocess.Popen([sys.executable, "-c", MOUNTED, "survey", "serve", "--bank", str(tiny_bank.folder),
                             "--results", str(results), "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=os.environ | {"COLUMNS": "200"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        url = None
        for _ in range(10):
            line = proc.stdout.readline()
            if line.startswith("open http://127.0.0.1:"):
                url = line.split()[1]
                break
        assert url, proc.stderr.read() if proc.poll() is not None else "no URL printed"
        q = tiny_bank.questions[0]
        body = urlencode({"participant": "cli-1", "question": q.id, "choice": 4, "ms": 10}).encode()
        with urllib.request.urlopen(urllib.request.Request(url + "answer", data=body)) as resp:
            assert resp.status == 200 and b"question 2 of 3" in resp.read()  # followed the 303 to the next question
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "answer stored: cli-1 q0000 -> E" in out and "survey stopped" in out and "Traceback" not in err
    with AnswerStore(results) as store:
        assert [(a.participant, a.question_id, a.choice) for a in store.answers()] == [("cli-1", q.id, 4)]


def test_main_cli_prints_one_line_errors(tiny_bank, tmp_path):
    r = subprocess.run([sys.executable, "-m", "trojanbench.cli", "survey", "serve", "--bank", str(tmp_path / "nope"),
                        "--results", str(tmp_path / "r.sqlite")], capture_output=True, text=True, timeout=120, check=False)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: no question bank"), r.stderr
    r = subprocess.run([sys.executable, "-m", "trojanbench.cli", "survey", "results", "--bank", str(tiny_bank.folder),
                        "--results", str(tmp_path)], capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 2 and r.stderr.strip().startswith("error: results store") and "folder" in r.stderr
