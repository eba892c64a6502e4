"""The survey web app: a standard-library HTTP server (no framework) that shows a bank's questions to people.

Routes
    GET  /                     start page: asks for a participant id (a pseudonym, 1-40 of [A-Za-z0-9_-])
    GET  /q?participant=ID     the participant's next unanswered question, or "done"
    POST /answer               participant, question, choice (the option's index in the bank, 0-7), ms (response
                               time); committed, then 303 -> /q
    GET  /img/<path>           a PNG of the bank, served only if a question names it

Each participant sees at most one tool's question per trojaned model: the bank holds one question per (model, tool),
and a participant id fixes which tool it gets for each model (`assigned_questions`), rotating through the tools so
that every participant sees them in equal shares and, over participants, every (model, tool) pair is asked about
equally often. The order of the questions and of each question's options is shuffled per participant, so no
position is tied to the true trigger or to a tool. All of it is a function of the id alone: a reload or a restart
of the server resumes the same sequence.

Everything a browser sends is validated here (a page's own checks are a convenience, not a defence); a bad
request gets 400 and stores nothing. Pages use no external resource, and a Content-Security-Policy says so.
"""

from __future__ import annotations

import hashlib
import html
import ipaddress
import random
import re
import secrets
import socket
import sqlite3
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

from ..errors import UserError
from .answers import AnswerStore, valid_participant
from .bank import Bank, Question

LETTERS = "ABCDEFGH"
MAX_BODY = 4096
MAX_MS = 24 * 3600 * 1000
_CHOICE = re.compile(r"^[0-7]$")
_MS = re.compile(r"^[0-9]{1,9}$")

CSS = """
body{font-family:system-ui,sans-serif;max-width:60rem;margin:1.5rem auto;padding:0 1rem;color:#222}
h1{font-size:1.3rem}.progress{color:#666}
.tool{display:flex;flex-wrap:wrap;gap:.5rem;margin:.5rem 0 1rem;padding:.5rem;background:#f3f3f3;border-radius:6px}
.tool img,.option img{image-rendering:pixelated;width:96px;height:96px;object-fit:contain;display:block}
.options{display:grid;grid-template-columns:repeat(4,minmax(0,1fr));gap:.75rem}
.option{display:flex;flex-direction:column;align-items:center;gap:.3rem;padding:.5rem;border:2px solid #bbb;
 border-radius:6px;background:#fff;cursor:pointer;font-size:1.1rem;font-weight:600}
.option:hover,.option:focus{border-color:#1565c0;background:#e3f2fd}
.error{color:#b00020}input{font-size:1rem;padding:.3rem}button.start{font-size:1rem;padding:.3rem .8rem}
"""


def _seed(*parts: str) -> int:
    return int.from_bytes(hashlib.sha256("\0".join(parts).encode()).digest()[:8], "big")


def assigned_questions(bank: Bank, participant: str) -> list[Question]:
    """One question per trojaned model: for the i-th model (in bank order) the tool at position (slot + i) of that
    model's tools (sorted by name), with `slot` drawn from the participant id. A Latin-square rotation: within a
    participant the tools take turns across models (equal shares, up to one), and over participants each model's
    tools are drawn equally often."""
    by_model: dict[str, list[Question]] = {}
    for q in bank.questions:
        by_model.setdefault(q.model_id, []).append(q)
    slot = _seed("slot", participant)
    out = []
    for i, questions in enumerate(by_model.values()):
        tools = sorted(questions, key=lambda q: (q.tool, q.id))
        out.append(tools[(slot + i) % len(tools)])
    return out


def question_order(bank: Bank, participant: str) -> list[Question]:
    """The participant's questions (`assigned_questions`) in an order fixed by the participant id (so a reload or a
    restart of the server resumes the same sequence) and different across participants (so order effects average
    out)."""
    order = assigned_questions(bank, participant)
    random.Random(_seed("order", participant)).shuffle(order)
    return order


def option_order(question: Question, participant: str) -> list[int]:
    """The bank indices of `question`'s options in the order this participant sees them (letters A, B, ...)."""
    order = list(range(len(question.options)))
    random.Random(_seed("options", participant, question.id)).shuffle(order)
    return order


def _page(title: str, body: str, nonce: str | None = None, script: str = "") -> bytes:
    js = f"<script nonce='{nonce}'>{script}</script>" if script else ""
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><meta name=viewport "
            f"content='width=device-width,initial-scale=1'><link rel=icon href='data:,'><title>{html.escape(title)}"
            f"</title><style>{CSS}</style></head><body>{body}{js}</body></html>").encode()


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    app: SurveyServer


class _HTTPServer6(_HTTPServer):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    server_version = "trojanbench-survey"
    sys_version = ""

    def log_message(self, format, *args):
        pass  # the CLI reports answers itself; per-request lines would drown them

    # -- plumbing -------------------------------------------------------------------------------------------
    def _send(self, status: int, body: bytes, content_type: str = "text/html; charset=utf-8",
              headers: dict[str, str] | None = None, nonce: str | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        script = f"'nonce-{nonce}'" if nonce else "'none'"
        self.send_header("Content-Security-Policy", f"default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; "
                                                    f"script-src {script}; form-action 'self'; base-uri 'none'; "
                                                    "frame-ancestors 'none'")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Cache-Control", "no-store" if content_type.startswith("text/") else "private, max-age=3600")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, message: str) -> None:
        body = _page("error", f"<h1>{status} {HTTPStatus(status).phrase}</h1><p class=error>{html.escape(message)}</p>"
                              "<p><a href='/'>back to the start</a></p>")
        self._send(status, body)

    def _host_ok(self) -> bool:
        """On loopback, refuse requests whose Host header names another site: a web page elsewhere could
        otherwise reach this server through DNS rebinding and post answers."""
        app = self.server.app
        if not app.loopback:
            return True
        port = app.port
        host = (self.headers.get("Host") or "").strip().lower()
        return host in {f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"}

    # -- routes ---------------------------------------------------------------------------------------------
    def do_GET(self):
        if not self._host_ok():
            return self._error(400, "unexpected Host header")
        url = urlsplit(self.path)
        if url.path == "/":
            return self._start()
        if url.path == "/q":
            try:
                query = parse_qs(url.query, keep_blank_values=True, max_num_fields=4)
            except ValueError:
                return self._error(400, "malformed query")
            values = query.get("participant", [])
            pid = values[0].strip() if len(values) == 1 else None
            if not valid_participant(pid):
                return self._error(400, "the participant id must be 1 to 40 letters, digits, '_' or '-'")
            return self._question(pid)
        if url.path.startswith("/img/"):
            return self._image(unquote(url.path[len("/img/"):]))
        return self._error(404, "no such page")

    def do_HEAD(self):
        return self.do_GET()

    def do_POST(self):
        if not self._host_ok():
            return self._error(400, "unexpected Host header")
        if urlsplit(self.path).path != "/answer":
            return self._error(404, "no such page")
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            return self._error(411, "a Content-Length is required")
        if not 0 <= length <= MAX_BODY:
            return self._error(413, "request too large")
        raw = self.rfile.read(length)
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype != "application/x-www-form-urlencoded":
            return self._error(400, "answers are posted as an HTML form (application/x-www-form-urlencoded)")
        try:
            form = parse_qs(raw.decode("ascii"), keep_blank_values=True, strict_parsing=True, max_num_fields=8)
        except (UnicodeDecodeError, ValueError):
            return self._error(400, "malformed form")
        fields = {}
        for name in ("participant", "question", "choice", "ms"):
            values = form.get(name, [])
            if len(values) != 1:
                return self._error(400, f"the form must carry exactly one {name!r}")
            fields[name] = values[0]
        if set(form) - set(fields):
            return self._error(400, f"unknown form field {min(set(form) - set(fields))!r}")
        app = self.server.app
        pid = fields["participant"]
        if not valid_participant(pid):
            return self._error(400, "the participant id must be 1 to 40 letters, digits, '_' or '-'")
        question = app.bank.question(fields["question"])
        if question is None:
            return self._error(400, "unknown question")
        if question.id not in {q.id for q in assigned_questions(app.bank, pid)}:
            return self._error(400, "this question is not one of this participant's (each participant answers one "
                                    "tool's question per model)")
        if not _CHOICE.match(fields["choice"]) or int(fields["choice"]) >= len(question.options):
            return self._error(400, f"choice must be a whole number from 0 to {len(question.options) - 1}")
        ms = fields["ms"]
        if ms and (not _MS.match(ms) or int(ms) > MAX_MS):
            return self._error(400, "ms must be the response time in whole milliseconds (at most a day) or empty")
        choice = int(fields["choice"])
        try:
            stored = app.store.add(app.bank.key, pid, question.id, choice, question.answer, int(ms) if ms else None)
        except sqlite3.Error as e:  # e.g. the file locked past the busy timeout: say so rather than drop the answer
            return self._error(503, f"the answer could not be stored ({e}); please click again")
        if stored and app.on_answer is not None:
            app.on_answer(pid, question.id, choice)
        self._send(303, b"", headers={"Location": f"/q?participant={quote(pid)}"})

    # -- pages ----------------------------------------------------------------------------------------------
    def _start(self):
        title = html.escape(self.server.app.bank.title)
        n = len({q.model_id for q in self.server.app.bank.questions})
        body = (f"<h1>{title}</h1><p>You will see {n} questions. Each shows a few images that a tool produced while "
                "searching a neural network for a hidden trigger, and up to 8 candidate triggers (each applied to a "
                "clean image). Pick the candidate the tool's images resemble most. There is no time limit; go with your "
                "first impression.</p><p>Enter a participant id you were given (a pseudonym: no names or e-mail "
                "addresses). With the same id you can stop and come back later.</p>"
                "<form method=get action='/q'><label>participant id <input name=participant id=participant required "
                "maxlength=40 pattern='[A-Za-z0-9_\\-]{1,40}' autocomplete=off></label> "
                "<button class=start type=submit id=start>start</button></form>")
        self._send(200, _page(self.server.app.bank.title, body))

    def _question(self, pid: str):
        app = self.server.app
        order = question_order(app.bank, pid)
        done = app.store.answered(app.bank.key, pid) & {q.id for q in order}
        todo = [q for q in order if q.id not in done]
        title = html.escape(app.bank.title)
        if not todo:
            body = (f"<h1>{title}</h1><p id=done>All {len(order)} questions answered. Thank you, "
                    f"{html.escape(pid)}! You can close this page.</p>")
            return self._send(200, _page(app.bank.title, body))
        q = todo[0]
        tool_imgs = "".join(f"<img src='/img/{quote(p)}' alt='tool image {i + 1}'>" for i, p in enumerate(q.images))
        # each button posts the option's index in the bank (its id says the same); the letter is its place here
        buttons = "".join(f"<button type=submit class=option name=choice value={i} id=option-{i} "
                          f"aria-label='option {LETTERS[pos]}'><img src='/img/{quote(q.options[i])}' "
                          f"alt='option {LETTERS[pos]}'><span>{LETTERS[pos]}</span></button>"
                          for pos, i in enumerate(option_order(q, pid)))
        body = (f"<h1>{title}</h1><p class=progress>question {len(done) + 1} of {len(order)} "
                f"&middot; participant {html.escape(pid)}</p>"
                "<p>The tool produced these images:</p>"
                f"<div class=tool>{tool_imgs}</div>"
                "<p>Which of these triggers do they resemble most? Click one.</p>"
                f"<form method=post action='/answer' id=answer data-question='{html.escape(q.id)}'>"
                f"<input type=hidden name=participant value='{html.escape(pid)}'>"
                f"<input type=hidden name=question value='{html.escape(q.id)}'>"
                "<input type=hidden name=ms value=''>"
                f"<div class=options>{buttons}</div></form>")
        # the response time runs from page load to the click; a second click is ignored so one answer is sent
        script = ("const t0=performance.now();let sent=false;const f=document.getElementById('answer');"
                  "f.addEventListener('submit',e=>{if(sent){e.preventDefault();return;}sent=true;"
                  "f.elements.ms.value=String(Math.round(performance.now()-t0));});")
        nonce = secrets.token_urlsafe(16)
        self._send(200, _page(app.bank.title, body, nonce, script), nonce=nonce)

    def _image(self, rel: str):
        app = self.server.app
        # only paths the bank names (already checked to be plain relative paths inside its folder) are served;
        # anything else, `..` included, is simply not found
        if rel not in app.bank.image_paths:
            return self._error(404, "no such image")
        try:
            data = (app.bank.folder / rel).read_bytes()
        except OSError:
            return self._error(404, "image missing from the bank folder")
        self._send(200, data, "image/png")


class SurveyServer:
    """The app bound to `host:port` (port 0: any free port). `start()` serves from a background thread (tests),
    `serve_forever()` from the caller's (the CLI); `stop()` shuts down and closes the answer store."""

    def __init__(self, bank: Bank, results: str | Path, host: str = "127.0.0.1", port: int = 8765,
                 on_answer: Callable[[str, str, int], None] | None = None):
        self.bank = bank
        self.on_answer = on_answer
        self.store = AnswerStore(results)
        try:
            self.loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            self.loopback = host == "localhost"
        cls = _HTTPServer6 if ":" in host else _HTTPServer
        try:
            self.httpd = cls((host, port), _Handler)
        except OSError as e:
            self.store.close()
            raise UserError(f"cannot listen on {host}:{port} ({e.strerror or e}); pick another --port "
                            "or stop the program using it") from None
        self.httpd.app = self
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        return self.httpd.server_address[0]

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def start(self) -> int:
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="survey-server", daemon=True)
        self._thread.start()
        return self.port

    def serve_forever(self) -> None:
        self.httpd.serve_forever(poll_interval=0.2)

    def stop(self) -> None:
        if self._thread is not None:
            self.httpd.shutdown()  # waits for serve_forever to return; must not run on its thread
            self._thread.join()
            self._thread = None
        self.httpd.server_close()
        self.store.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
