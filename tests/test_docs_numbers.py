"""Every measured number in README.md and docs/*.md comes from a JSON under benchmarks/results/ that a script wrote.

Measured tables and statements sit in blocks `<!-- measured:NAME -->` ... `<!-- /measured:NAME -->`, rendered by
benchmarks/render_docs.py from their source files. This test fails when
- a block is not what its renderer makes of the current files (a number typed or edited by hand, a stale block),
- a number in a block is not in its source files (a number that the renderer itself typed; a board's rank column
  counts as in its source: the position of a tool in the stored board),
- a source file lacks its provenance (run id, git commit, config, cores, torch threads, date),
- a results JSON is not written by a script in benchmarks/ (its name must match one that writes it).
"""

import importlib.util
import json
import math
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("render_docs", ROOT / "benchmarks" / "render_docs.py")
render_docs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(render_docs)

# a number: not part of a word, a tool name (magnitude-prune-50), a run id or a commit hash
NUMBER = re.compile(r"(?<![\w.@/`-])[-+]?\d+(?:\.\d+)?(?![\w.-]*[a-zA-Z_`])")


def _numbers(obj) -> list[float]:
    if isinstance(obj, bool):
        return []
    if isinstance(obj, (int, float)):
        return [float(obj)] if math.isfinite(obj) else []
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in _numbers(v)]
    if isinstance(obj, list):
        return [x for v in obj for x in _numbers(v)]
    if isinstance(obj, str):  # numbers the JSON holds as text (dates, thresholds in notes)
        return [float(t) for t in re.findall(r"\d+(?:\.\d+)?", obj)]
    return []


def _ranks(obj) -> list[float]:
    """The rank column of a stored board's table: the position of each tool in its board's (ranked) list."""
    if not isinstance(obj, dict):
        return []
    return [float(r) for b in obj.get("boards", []) if isinstance(b, dict) for r in range(1, len(b.get("tools", [])) + 1)]


def _found(token: str, pool: list[float]) -> bool:
    x = float(token)
    decimals = len(token.split(".")[1]) if "." in token else 0
    tol = 0.5 * 10 ** -decimals + 1e-9
    return any(abs(v - x) <= tol or abs(100 * v - x) <= tol or abs(abs(v) - abs(x)) <= tol for v in pool)


def _blocks():
    return [(doc, name, body) for doc in render_docs.documents() for name, body in render_docs.blocks_in(doc)]


def test_the_readme_has_measured_blocks_and_every_one_is_known():
    names = [name for doc, name, _ in _blocks() if doc.name == "README.md"]
    assert names, "README.md has no measured blocks"
    unknown = [(doc.name, name) for doc, name, _ in _blocks() if name not in render_docs.RENDERERS]
    assert not unknown, unknown


@pytest.mark.parametrize("doc,name,body", _blocks(), ids=lambda v: getattr(v, "name", str(v))[:40])
def test_each_block_is_its_rendering_and_its_numbers_are_in_its_sources(doc, name, body):
    sources, _ = render_docs.RENDERERS[name]
    assert body == render_docs.render(name), f"{doc.name}: block {name} is stale; run benchmarks/render_docs.py"
    present = [render_docs.load(s) for s in sources if s not in render_docs.missing_sources(name)]
    pool = [x for data in present for x in _numbers(data) + _ranks(data)]
    missing = [t for t in NUMBER.findall(body) if not _found(t, pool)]
    assert not missing, f"{doc.name}: block {name} holds numbers that are not in {sources}: {missing[:10]}"


def test_every_source_records_its_provenance_and_has_a_script():
    sources = sorted({s for _, name, _ in _blocks() for s in render_docs.RENDERERS[name][0]})
    scripts = "\n".join(p.read_text() for p in (ROOT / "benchmarks").glob("*.py"))
    for source in sources:
        stem = source.removesuffix(".json")
        if (render_docs.RESULTS / source).is_file():  # a missing one renders as "not measured yet" (listed below)
            data = json.loads((render_docs.RESULTS / source).read_text())
            prov = data.get("provenance", {})
            missing = [f for f in render_docs.PROVENANCE_FIELDS if prov.get(f) in (None, "")]
            assert not missing, f"{source} lacks provenance fields {missing}"
        assert f'"{stem}"' in scripts or f"'{stem}'" in scripts or f"{stem}.json" in scripts, \
            f"no script in benchmarks/ writes {source}"


CITED = re.compile(r"benchmarks/results/([\w.-]+\.json)")
MEASURED = re.compile(r"(?<![\w.@/`-])\d+\.\d+%?|(?<![\w.@/`-])\d+%")  # decimals and percentages: measured-looking


def _cited_lines():
    out = []
    for doc in render_docs.documents():
        text = render_docs.BLOCK.sub("", doc.read_text())  # blocks are checked above
        text = re.sub(r"```.*?```", "", text, flags=re.S)  # code samples
        for para in re.split(r"\n\s*\n", text):  # a paragraph, a list item's run of lines, a table
            names = CITED.findall(para)
            if names and MEASURED.search(para):
                out.append((doc.name, " ".join(para.split()), names))
    return out


def test_prose_that_cites_a_results_file_quotes_only_numbers_in_it():
    """Outside measured blocks, a paragraph (or table) that names a file under benchmarks/results/ may quote only
    numbers found in that file, and the file must record its provenance: a number typed beside its source is
    checked against it. (Settings quoted beside a source, "30 epochs", are integers and not checked.)"""
    bad = []
    for doc, line, names in _cited_lines():
        pool = []
        for name in names:
            path = render_docs.RESULTS / name
            if not path.is_file():
                bad.append(f"{doc}: cites missing {name}")
                continue
            data = json.loads(path.read_text())
            if any(data.get("provenance", {}).get(f) in (None, "") for f in render_docs.PROVENANCE_FIELDS):
                bad.append(f"{doc}: cites {name}, which records no provenance")
            pool += _numbers(data)
        missing = [t for t in MEASURED.findall(line) if not _found(t.rstrip("%"), pool)]
        if missing:
            bad.append(f"{doc}: {missing} not in {names}: {line[:100]}")
    assert not bad, "\n".join(bad)


def test_the_readme_tables_are_all_measured():
    """Every block of README.md has its source files: the README never shows a "not measured yet" placeholder
    (docs/ may, for results that a long benchmark has not regenerated yet)."""
    pending = [name for doc, name, _ in _blocks() if doc.name == "README.md" and render_docs.missing_sources(name)]
    assert not pending, f"README.md blocks without their results files: {pending}"


def test_every_results_file_records_its_provenance():
    """benchmarks/results/ holds only files a script wrote with their provenance (older ones live in git history)."""
    bad = []
    for path in sorted(render_docs.RESULTS.glob("*.json")):
        prov = json.loads(path.read_text()).get("provenance", {})
        missing = [f for f in render_docs.PROVENANCE_FIELDS if prov.get(f) in (None, "")]
        if missing:
            bad.append(f"{path.name}: {missing}")
    assert not bad, bad


def test_a_renderer_reads_the_machine_from_its_source():
    """The large zoo's build time is quoted with the cores of the machine that built it, read from the file (a number
    typed into the renderer would pass the check above whenever the same number occurs anywhere in the file)."""
    data = render_docs.load("large_zoo.json")
    other = {**data, "provenance": {**data["provenance"], "cores": 16}}
    text = render_docs.RENDERERS["large-zoo"][1]({"large_zoo.json": other})
    assert "wall time on 16 cores" in text


def test_a_board_whose_verdicts_are_of_the_old_test_says_so_under_its_table():
    """Boards stored before the sign-flip test (no `verdict_test` in the file) keep their verdicts, which were a
    paired bootstrap's; each table of one, and the README's summary, says so until it is re-run."""
    from trojanbench.results.boards import BoardSpec, Column, verdict_test

    tool = {"tool": "t", "role": "tool", "verdict": "beats", "n_models": 8, "metrics": {"asr": {"value": 0.1, "n": 8}}}
    old = {"task": "repair@0.05", "key": "asr", "reference": None, "tools": [tool]}
    spec = BoardSpec(task="repair@0.05", title="t", key="asr", higher_is_better=False, main=["asr"],
                     columns=[Column(name="asr", source="asr", stat="mean")])
    new = {**old, "verdict_test": verdict_test(spec)}
    assert "before commit" in render_docs.board_table(old, [("asr", "asr")])
    assert "before commit" not in render_docs.board_table(new, [("asr", "asr")])
    model_auroc = {**old, "key": "auroc", "tools": [{**tool, "metrics": {"auroc": {"value": 0.9, "n": 8, "low": 0.8,
                                                                                "high": 1.0, "method": "stratified bootstrap"}}}]}
    table = render_docs.board_table(model_auroc, [("auroc", "auroc")])
    assert "The verdicts of this board" not in table  # a model-level AUROC: the same test
    assert "The intervals of this board are from before commit" in table  # but the old interval
    mean_new = {**new, "tools": [{**tool, "metrics": {"asr": {"value": 0.1, "n": 8, "low": 0.0, "high": 0.3,
                                                             "method": "expanded bootstrap"}}}]}
    assert "before commit" not in render_docs.board_table(mean_new, [("asr", "asr")])
    mean_old = {**new, "tools": [{**tool, "metrics": {"asr": {**mean_new["tools"][0]["metrics"]["asr"],
                                                             "method": "bootstrap"}}}]}
    assert "The intervals of this board are from before" in render_docs.board_table(mean_old, [("asr", "asr")])
    score = {**model_auroc, "verdict_test": "paired bootstrap", "tools": [{**tool, "metrics": {"auroc": {**model_auroc["tools"][0]["metrics"]["auroc"],
                                                                   "method": "score (Newcombe variance)"}}}]}
    assert "before commit" not in render_docs.board_table(score, [("auroc", "auroc")])
    sample_auroc = {**old, "key": "auroc", "tools": [{**tool, "metrics": {"auroc": {"value": 0.9, "n": 8, "method": "bootstrap"}}}]}
    assert "before commit" in render_docs.board_table(sample_auroc, [("auroc", "auroc")])  # a mean of per-model AUROCs
    assert "The verdicts of repair@0.05 are from before" in render_docs.boards_summary({"boards": [{**old, "title": "t"}]})
