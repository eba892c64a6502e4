"""The survey app over real HTTP: valid answers are committed at once, every bad request is a 400 that stores
nothing, only the bank's images are served, and answers survive a restart."""

import http.client
import socket
import sqlite3
from urllib.parse import urlencode

import pytest

from trojanbench.errors import UserError
from trojanbench.results import ResultRow, ResultsStore
from trojanbench.survey.bank import load_bank
from trojanbench.survey.server import SurveyServer, question_order


@pytest.fixture
def app(tiny_bank, tmp_path):
    server = SurveyServer(tiny_bank, tmp_path / "results.sqlite", port=0)
    server.start()
    yield server
    server.stop()


def request(server, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def post(server, fields, headers=None):
    body = urlencode(fields) if isinstance(fields, (dict, list)) else fields
    hdrs = {"Content-Type": "application/x-www-form-urlencoded"} | (headers or {})
    return request(server, "POST", "/answer", body, hdrs)


def stored(path):
    with sqlite3.connect(path) as conn:  # a separate connection: sees only what was committed
        return conn.execute("SELECT participant, question_id, choice, correct, response_ms FROM survey_answers "
                            "ORDER BY created").fetchall()


def test_valid_answer_is_committed_and_the_next_question_follows(app, tiny_bank, tmp_path):
    order = question_order(tiny_bank, "p-01")
    status, _, page = request(app, "GET", "/q?participant=p-01")
    assert status == 200 and f"value='{order[0].id}'".encode() in page and b"question 1 of 3" in page
    q = order[0]
    status, headers, _ = post(app, {"participant": "p-01", "question": q.id, "choice": q.answer, "ms": 1234})
    assert status == 303 and headers["Location"] == "/q?participant=p-01"
    assert stored(tmp_path / "results.sqlite") == [("p-01", q.id, q.answer, 1, 1234)]
    page = request(app, "GET", "/q?participant=p-01")[2]
    assert f"value='{order[1].id}'".encode() in page and b"question 2 of 3" in page
    # a second answer to the same question is ignored: the first one counts
    status, _, _ = post(app, {"participant": "p-01", "question": q.id, "choice": (q.answer + 1) % 8, "ms": ""})
    assert status == 303 and len(stored(tmp_path / "results.sqlite")) == 1
    for other in order[1:]:
        assert post(app, {"participant": "p-01", "question": other.id, "choice": 0, "ms": ""})[0] == 303
    page = request(app, "GET", "/q?participant=p-01")[2]
    assert b"id=done" in page and b"All 3 questions answered" in page
    rows = stored(tmp_path / "results.sqlite")
    assert [r[1] for r in rows] == [q.id for q in order] and rows[-1][4] is None


def test_order_is_per_participant_and_stable(tmp_path, make_bank):
    bank = load_bank(make_bank(tmp_path / "bank", n=8)[0])
    orders = {pid: [q.id for q in question_order(bank, pid)] for pid in ("alice", "bob", "carol")}
    assert orders["alice"] == [q.id for q in question_order(bank, "alice")]
    assert len({tuple(o) for o in orders.values()}) == 3
    assert all(sorted(o) == sorted(q.id for q in bank.questions) for o in orders.values())


@pytest.mark.parametrize("fields", [
    {"participant": "", "question": "q0000", "choice": "1", "ms": ""},
    {"participant": "has space", "question": "q0000", "choice": "1", "ms": ""},
    {"participant": "x" * 41, "question": "q0000", "choice": "1", "ms": ""},
    {"participant": "../etc", "question": "q0000", "choice": "1", "ms": ""},
    {"participant": "zoë", "question": "q0000", "choice": "1", "ms": ""},
    {"participant": "p1", "question": "q9999", "choice": "1", "ms": ""},
    {"participant": "p1", "question": "", "choice": "1", "ms": ""},
    {"participant": "p1", "question": "q0000", "choice": "8", "ms": ""},
    {"participant": "p1", "question": "q0000", "choice": "-1", "ms": ""},
    {"participant": "p1", "question": "q0000", "choice": "1.0", "ms": ""},
    {"participant": "p1", "question": "q0000", "choice": "", "ms": ""},
    {"participant": "p1", "question": "q0000", "choice": "A", "ms": ""},
    {"participant": "p1", "question": "q0000", "choice": "1", "ms": "fast"},
    {"participant": "p1", "question": "q0000", "choice": "1", "ms": "-5"},
    {"participant": "p1", "question": "q0000", "choice": "1", "ms": "999999999"},
    {"participant": "p1", "question": "q0000", "choice": "1"},
    {"participant": "p1", "question": "q0000", "ms": ""},
    {"participant": "p1", "question": "q0000", "choice": "1", "ms": "", "admin": "1"},
    [("participant", "p1"), ("question", "q0000"), ("choice", "1"), ("choice", "2"), ("ms", "")],
    "participant=p1&question=q0000&choice=1&ms=&&&",
    "participant=p1&question=q0000&choice=%FF&ms=",
])
def test_invalid_answers_are_400_and_store_nothing(app, tmp_path, fields):
    status, _, page = post(app, fields)
    assert status == 400, page
    assert b"<p class=error>" in page
    assert stored(tmp_path / "results.sqlite") == []


def test_other_bad_requests(app, tmp_path):
    good = urlencode({"participant": "p1", "question": "q0000", "choice": "1", "ms": "5"})
    assert post(app, good, {"Content-Type": "application/json"})[0] == 400
    assert post(app, good + "&pad=" + "x" * 5000)[0] == 413
    assert request(app, "POST", "/elsewhere", good, {"Content-Type": "application/x-www-form-urlencoded"})[0] == 404
    assert post(app, good, {"Host": "evil.example:80"})[0] == 400  # DNS rebinding
    assert request(app, "GET", "/q?participant=a%20b")[0] == 400
    assert request(app, "GET", "/q")[0] == 400
    assert request(app, "GET", "/q?participant=a&participant=b")[0] == 400
    assert request(app, "GET", "/q?participant=a&a=1&b=2&c=3&d=4")[0] == 400
    assert request(app, "GET", "/admin")[0] == 404
    assert stored(tmp_path / "results.sqlite") == []
    assert post(app, good)[0] == 303  # the same answer, well formed, is accepted


def test_only_bank_images_are_served(app, tiny_bank):
    (tiny_bank.folder.parent / "secret.png").write_bytes(b"\x89PNG secret")  # beside the bank, not in it
    rel = tiny_bank.questions[0].options[0]
    status, headers, body = request(app, "GET", f"/img/{rel}")
    assert status == 200 and headers["Content-Type"] == "image/png" and body.startswith(b"\x89PNG\r\n\x1a\n")
    assert headers["X-Content-Type-Options"] == "nosniff"
    for path in ("/img/../secret.png", "/img/%2e%2e/secret.png", "/img/q0000/../../secret.png",
                 "/img/questions.json", "/img//etc/passwd", "/img/q0000%2f..%2f..%2fsecret.png", "/img/",
                 "/img/q0000/opt-0.png%00.png", "/../secret.png", "/img/q0000/nope.png"):
        status, _, body = request(app, "GET", path)
        assert status == 404 and b"secret" not in body, path


def test_pages_are_self_contained(app):
    status, headers, page = request(app, "GET", "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    status, headers, page = request(app, "GET", "/q?participant=p1")
    assert b"http://" not in page and b"https://" not in page and page.count(b"<button") == 8
    nonce = headers["Content-Security-Policy"].split("'nonce-")[1].split("'")[0]
    assert f"<script nonce='{nonce}'>".encode() in page


def test_answers_survive_a_restart(tiny_bank, tmp_path):
    results = tmp_path / "results.sqlite"
    with ResultsStore(results) as rs:  # the survey shares the results store's file, beside its tables
        run = rs.start_run("track:synthesize", {})
    with ResultsStore(run) as rs:
        rs.write(ResultRow("t", "m", "synthesize", "transfer_asr", 0.5))
    order = question_order(tiny_bank, "p9")
    with SurveyServer(tiny_bank, results, port=0) as first:
        first.start()
        assert post(first, {"participant": "p9", "question": order[0].id, "choice": "2", "ms": "800"})[0] == 303
        port = first.port
    # a new server on the same file (even the same port) resumes where the participant stopped
    with SurveyServer(tiny_bank, results, port=port) as second:
        second.start()
        page = request(second, "GET", "/q?participant=p9")[2]
        assert f"value='{order[1].id}'".encode() in page and b"question 2 of 3" in page
    assert stored(results) == [("p9", order[0].id, 2, int(order[0].answer == 2), 800)]
    with ResultsStore(results) as rs:
        assert rs.count() == 1 and rs.rows(run.run_id)[0].value == 0.5


def test_port_in_use_and_bad_results_paths(tiny_bank, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(UserError, match="cannot listen on 127.0.0.1"):
            SurveyServer(tiny_bank, tmp_path / "r.sqlite", port=s.getsockname()[1])
    with pytest.raises(UserError, match="is a folder"):
        SurveyServer(tiny_bank, tmp_path, port=0)
    (tmp_path / "junk.sqlite").write_bytes(b"this is not a database, just some bytes" * 100)
    with pytest.raises(UserError, match="not a trojanbench results store"):
        SurveyServer(tiny_bank, tmp_path / "junk.sqlite", port=0)


def test_an_answer_that_cannot_be_stored_is_a_503_not_a_silent_loss(app):
    app.store.close()  # stands in for a disk or lock failure
    status, _, page = post(app, {"participant": "p1", "question": "q0000", "choice": "1", "ms": ""})
    assert status == 503 and b"could not be stored" in page


def _multi_tool_bank(tmp_path, make_bank, models=6, tools=("A", "B", "C")):
    """One question per (model, tool), as the synthesize track writes them."""
    import json

    from trojanbench.survey.bank import BANK_FILE

    folder, _ = make_bank(tmp_path / "multi", n=models * len(tools), tools=tools)
    raw = json.loads((folder / BANK_FILE).read_text())
    for i, q in enumerate(raw["questions"]):
        q["model_id"] = f"model-{i // len(tools)}"
    (folder / BANK_FILE).write_text(json.dumps(raw))
    return load_bank(folder)


def test_each_participant_gets_one_tool_per_model_in_balanced_shares(tmp_path, make_bank):
    from collections import Counter

    bank = _multi_tool_bank(tmp_path, make_bank)
    pairs = Counter()
    for p in range(60):
        mine = question_order(bank, f"p{p}")
        assert len(mine) == 6 and len({q.model_id for q in mine}) == 6  # every model once, one tool each
        assert set(Counter(q.tool for q in mine).values()) == {2}  # the tools take turns: 2 questions each
        assert [q.id for q in mine] == [q.id for q in question_order(bank, f"p{p}")]
        pairs.update((q.model_id, q.tool) for q in mine)
    assert len(pairs) == 18 and min(pairs.values()) >= 8, pairs  # about 20 each over 60 participants


def test_options_are_shuffled_per_participant_and_answers_name_bank_options(tmp_path, make_bank):
    import re

    from trojanbench.survey.server import option_order

    bank = _multi_tool_bank(tmp_path, make_bank, models=2, tools=("A", "B"))
    orders = {p: tuple(option_order(bank.questions[0], p)) for p in ("alice", "bob", "carol", "dave")}
    assert len(set(orders.values())) > 1 and all(sorted(o) == list(range(8)) for o in orders.values())
    with SurveyServer(bank, tmp_path / "r.sqlite", port=0) as server:
        server.start()
        mine = question_order(bank, "alice")
        page = request(server, "GET", "/q?participant=alice")[2].decode()
        values = [int(v) for v in re.findall(r"name=choice value=(\d)", page)]
        assert values == option_order(mine[0], "alice")  # shown in alice's order, each posting its bank index
        assert b"question 1 of 2" in page.encode()
        # a question of the same model for another tool is not alice's: refused, nothing stored
        other = next(q for q in bank.questions if q.model_id == mine[0].model_id and q.id != mine[0].id)
        assert post(server, {"participant": "alice", "question": other.id, "choice": "0", "ms": ""})[0] == 400
        assert post(server, {"participant": "alice", "question": mine[0].id, "choice": mine[0].answer, "ms": ""})[0] == 303
    assert stored(tmp_path / "r.sqlite") == [("alice", mine[0].id, mine[0].answer, 1, None)]


def test_a_choice_past_the_question_s_options_is_refused(tmp_path):
    import torch

    from trojanbench.survey.bank import write_bank_from_tensors

    g = torch.Generator().manual_seed(0)
    write_bank_from_tensors(tmp_path / "bank", [{
        "tool": "t", "model_id": "m", "trigger_kind": "style", "insidious": False, "answer": 1, "judge_choice": 1,
        "images": list(torch.rand(1, 1, 8, 8, generator=g)), "options": list(torch.rand(3, 1, 8, 8, generator=g))}])
    bank = load_bank(tmp_path / "bank")
    with SurveyServer(bank, tmp_path / "r.sqlite", port=0) as server:
        server.start()
        page = request(server, "GET", "/q?participant=p1")[2]
        assert page.count(b"<button") == 3
        assert post(server, {"participant": "p1", "question": "q0001", "choice": "3", "ms": ""})[0] == 400
        assert post(server, {"participant": "p1", "question": "q0001", "choice": "2", "ms": ""})[0] == 303
    assert stored(tmp_path / "r.sqlite") == [("p1", "q0001", 2, 0, None)]
