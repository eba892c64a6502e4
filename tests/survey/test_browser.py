"""End to end in real Chromium: a participant enters an id, answers every question by clicking, and the
stored answers are exactly the clicks; no console errors, every image loads."""

import sqlite3

from trojanbench.survey.server import SurveyServer
from trojanbench.testing.browser import CHROMIUM_ARGS, chromium


def test_a_participant_answers_every_question_in_chromium(tiny_bank, tmp_path):
    exe = chromium()
    from playwright.sync_api import sync_playwright

    results = tmp_path / "results.sqlite"
    clicks = {}
    with SurveyServer(tiny_bank, results, port=0) as server, sync_playwright() as p:
        server.start()
        browser = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 800})
            errors = []
            page.on("console", lambda m: errors.append(m.text) if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(server.url, wait_until="load")
            page.fill("#participant", "e2e-1")
            with page.expect_navigation():
                page.click("#start")
            for step in range(len(tiny_bank.questions)):
                page.wait_for_load_state("load")
                assert page.locator("#done").count() == 0
                qid = page.get_attribute("#answer", "data-question")
                widths = page.evaluate("Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0)")
                assert len(widths) == 2 + 8 and all(w == 96 for w in widths), widths
                if step == 0:
                    page.screenshot(path=str(tmp_path / "question.png"), full_page=True)
                q = tiny_bank.question(qid)
                choice = q.answer if step % 2 == 0 else (q.answer + 3) % 8  # some right, some wrong
                clicks[qid] = choice
                with page.expect_navigation():
                    page.click(f"#option-{choice}")
            page.wait_for_load_state("load")
            assert "All 3 questions answered" in page.inner_text("#done")
        finally:
            browser.close()
    assert errors == []
    shot = (tmp_path / "question.png").read_bytes()
    assert shot.startswith(b"\x89PNG\r\n\x1a\n") and len(shot) > 10_000
    with sqlite3.connect(results) as conn:
        rows = conn.execute("SELECT participant, question_id, choice, correct, response_ms FROM survey_answers").fetchall()
    assert {r[1]: r[2] for r in rows} == clicks and {r[0] for r in rows} == {"e2e-1"}
    assert sorted(r[3] for r in rows) == sorted(int(c == tiny_bank.question(q).answer) for q, c in clicks.items())
    assert all(r[4] is not None and 0 <= r[4] < 120_000 for r in rows)  # the page measured a response time
