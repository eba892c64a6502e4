"""Zoo builds: gate, failures, resume after SIGKILL, executors agree, import."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trojanbench.config import ZooConfig
from trojanbench.errors import UserError
from trojanbench.zoo.build import Zoo, build_zoo, import_model
from trojanbench.zoo.store import load_model


def tiny_zoo(**overrides) -> ZooConfig:
    base = {
        "name": "tiny", "models_per_arch": 6, "archs": [{"arch": "cnn", "kwargs": {"width": 8, "depth": 2}}],
        "trojans": {"kinds": ["patch", "blended", "style"], "targets": [1, 2], "insidious_fraction": 0.34},
        "train": {"epochs": 6}, "gate": {"min_asr": 0.0, "max_clean_drop": 1.0, "retries": 1},
    }
    for k, v in overrides.items():
        base[k] = {**base[k], **v} if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return ZooConfig(**base)


def to_toml(cfg: ZooConfig) -> str:
    d = cfg.model_dump()
    lines = [f'name = "{d["name"]}"', f'models_per_arch = {d["models_per_arch"]}', "[data]", 'name = "digits"',
             "[[archs]]", 'arch = "cnn"', "kwargs = { width = 8, depth = 2 }", "[trojans]",
             f'kinds = {json.dumps(d["trojans"]["kinds"])}', f'targets = {d["trojans"]["targets"]}',
             f'insidious_fraction = {d["trojans"]["insidious_fraction"]}', "[train]", f'epochs = {d["train"]["epochs"]}',
             "[gate]", f'min_asr = {d["gate"]["min_asr"]}', f'max_clean_drop = {d["gate"]["max_clean_drop"]}',
             f'retries = {d["gate"]["retries"]}']
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("zoo") / "z"
    counts = build_zoo(tiny_zoo(), out, batch_models=3)
    return out, counts


def test_build_stores_every_model_with_its_card_and_split(built):
    out, counts = built
    assert counts == {"done": 6}
    zoo = Zoo(out)
    models = zoo.models()
    assert len(models) == 6
    for job, folder, card in models:
        model, loaded = load_model(folder)
        assert loaded.extra["job_id"] == job.id and loaded.extra["split"] == job.split
        assert (card.trojan is None) == (not job.trojaned)
        if job.trojaned:
            assert card.metrics["attack_success_rate"] > 0.5 and card.n_poisoned > 0
    insidious = [c for j, _, c in models if c.insidious]
    assert len(insidious) == 1
    # a second build finds everything done and trains nothing
    lines = (out / "log.jsonl").read_text().count("\n")
    assert build_zoo(tiny_zoo(), out) == {"done": 6}
    assert (out / "log.jsonl").read_text().count("\n") == lines


def test_insidious_trojan_stays_closer_to_its_twin_than_a_crude_one(built):
    out, _ = built
    models = {j.id: (j, f) for j, f, _ in Zoo(out).models()}

    def distance(job_id):
        job, folder = models[job_id]
        a = load_model(folder)[0].state_dict()
        b = load_model(models[job.twin][1])[0].state_dict()
        return sum(float(((a[k] - b[k]) ** 2).sum()) for k in a if a[k].is_floating_point() and "running" not in k)

    insidious = [j.id for j, _ in models.values() if j.trojaned and j.trojan.insidious]
    crude = [j.id for j, _ in models.values() if j.trojaned and not j.trojan.insidious]
    assert max(distance(i) for i in insidious) < min(distance(c) for c in crude)


def test_the_progress_bar_counts_each_model_and_a_built_zoo_gets_none(tmp_path):
    """A fully built zoo showed a bar at 100% reading "0.0 models/min ETA -:--:--"."""
    from contextlib import contextmanager

    calls, advanced = [], []

    @contextmanager
    def progress(total, done_before):
        calls.append((total, done_before))
        yield advanced.append

    assert build_zoo(tiny_zoo(), tmp_path / "z", batch_models=3, progress=progress) == {"done": 6}
    assert calls == [(6, 0)] and sum(advanced) == 6
    assert build_zoo(tiny_zoo(), tmp_path / "z", batch_models=3, progress=progress) == {"done": 6}
    assert calls == [(6, 0)]


def test_another_config_in_the_same_folder_is_refused(built):
    out, _ = built
    with pytest.raises(UserError, match="another config"):
        build_zoo(tiny_zoo(train={"epochs": 2}), out)


def test_a_folder_holding_something_else_is_refused_not_filled(tmp_path):
    """`zoo build --out runs/default` put a zoo's files among a run's results and report."""
    run = tmp_path / "run"
    (run / "report").mkdir(parents=True)
    (run / "results.sqlite").write_bytes(b"")
    with pytest.raises(UserError, match=r"run is not empty \(report, results.sqlite\) and holds no zoo"):
        build_zoo(tiny_zoo(), run)
    assert sorted(p.name for p in run.iterdir()) == ["report", "results.sqlite"]


def test_gate_rejects_and_failures_are_kept_while_the_rest_goes_on(tmp_path):
    cfg = tiny_zoo(models_per_arch=4, trojans={"kinds": ["patch", "blended"], "insidious_fraction": 0.0,
                                               "variants": {"patch": [{"size": 40}]}},
                   gate={"min_asr": 0.999, "max_clean_drop": 1.0, "retries": 1}, train={"epochs": 1})
    counts = build_zoo(cfg, tmp_path / "z", batch_models=4)
    zoo = Zoo(tmp_path / "z")
    status = zoo.status()
    assert counts.get("done", 0) >= 2 and len(status["failed"]) == 1
    failed = status["failed"][0]
    assert failed.attempts == 2 and "does not fit" in failed.errors[-1]
    for rec in status["rejected"]:
        assert rec.attempts == 2 and len({h["seed"] for h in rec.history}) == 2  # retried with another seed
        assert not (tmp_path / "z" / "models" / rec.id).exists()


def test_sigkill_mid_build_then_resume(tmp_path):
    cfg_path = tmp_path / "zoo.toml"
    cfg_path.write_text(to_toml(tiny_zoo(models_per_arch=8, train={"epochs": 8})))
    out = tmp_path / "z"
    cmd = [sys.executable, "-m", "trojanbench.cli", "zoo", "build", "--config", str(cfg_path), "--out", str(out),
           "--batch-models", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    log = out / "log.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline:
        if log.is_file() and log.read_text().count('"done"') >= 3:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = log.read_text().count('"done"')
    assert 3 <= done_before < 8, "the kill should land mid-build"
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    zoo = Zoo(out)
    assert len(zoo.status()["done"]) == 8
    events = [json.loads(line) for line in log.read_text().splitlines()]
    done_jobs = [e["job"] for e in events if e["event"] == "done"]
    assert len(done_jobs) == len(set(done_jobs)), "a finished job was trained again"
    finished = set(done_jobs) | {e["job"] for e in events if e["event"] == "recovered"}
    assert len(finished) == 8
    for job in finished:  # no training started for a job once it had finished
        first = min(i for i, e in enumerate(events) if e["job"] == job and e["event"] in ("done", "recovered"))
        assert not any(e["job"] == job and e["event"] == "start" for e in events[first:])
    for job, folder, card in zoo.models():
        load_model(folder)  # hashes verified
    assert not list(out.glob("**/.*.tmp"))


def test_ray_executor_gives_the_same_models_as_in_process(built, tmp_path):
    pytest.importorskip("ray", reason="ray is part of the test extra; install it to run this test")
    out, _ = built
    build_zoo(tiny_zoo(), tmp_path / "ray", executor="ray", jobs=2, batch_models=3)
    local = {j.id: c.weights_sha256 for j, _, c in Zoo(out).models()}
    remote = {j.id: c.weights_sha256 for j, _, c in Zoo(tmp_path / "ray").models()}
    assert remote == local  # bit-identical weights, insidious ones included


def test_pool_executor_gives_the_same_weights_in_other_chunks(built, tmp_path):
    out, _ = built
    build_zoo(tiny_zoo(), tmp_path / "pool", executor="pool", jobs=2, batch_models=2)
    local = {j.id: c.weights_sha256 for j, _, c in Zoo(out).models()}
    pooled = {j.id: c.weights_sha256 for j, _, c in Zoo(tmp_path / "pool").models()}
    assert pooled == local  # other processes, other chunks (2 instead of 3), the same bits


def test_import_a_model_trained_elsewhere(built, tmp_path):
    import shutil

    out, _ = built
    zoo_copy = tmp_path / "zoo"
    shutil.copytree(out, zoo_copy)
    _, folder, _ = Zoo(out).models()[0]
    job_id = import_model(zoo_copy, folder, "test")
    assert any(j.id == job_id for j, _, _ in Zoo(zoo_copy).models(split="test"))
    with pytest.raises(UserError, match="already"):
        import_model(zoo_copy, folder, "test")
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    (broken / "model.safetensors").write_bytes(b"\x80\x04junk")
    with pytest.raises(UserError, match="pickle"):
        import_model(zoo_copy, broken)


def test_a_model_from_another_dataset_is_refused_at_import(built, tmp_path):
    import shutil

    out, _ = built
    zoo_copy = tmp_path / "zoo"
    shutil.copytree(out, zoo_copy)
    _, folder, _ = Zoo(out).models()[0]
    other = tmp_path / "other"
    shutil.copytree(folder, other)
    card = json.loads((other / "card.json").read_text())
    card["dataset"]["name"] = "shapes"  # as `implant --dataset shapes` writes it
    from trojanbench.zoo.store import ModelCard

    card["id"] = ModelCard(**card).content_hash()[:16]
    (other / "card.json").write_text(json.dumps(card))
    with pytest.raises(UserError, match="trained on shapes; the zoo .* holds models of digits"):
        import_model(zoo_copy, other)
    assert len(Zoo(zoo_copy).plan()) == len(Zoo(out).plan())  # nothing added


def test_an_impossible_card_is_refused_at_import_naming_its_folder(built, tmp_path):
    """A card with trojan target 99 (of 10 classes) was imported; `trojanbench run` failed on it later, naming neither
    the model nor its job."""
    import shutil

    from trojanbench.zoo.store import ModelCard

    out, _ = built
    zoo_copy = tmp_path / "zoo"
    shutil.copytree(out, zoo_copy)
    folder = next(f for _, f, c in Zoo(out).models() if c.trojaned)
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    card = json.loads((bad / "card.json").read_text())
    card["trojan"]["poison"]["target"] = 99
    card["id"] = ModelCard.model_construct(**card).content_hash()[:16]  # only its content is wrong, not its hash
    (bad / "card.json").write_text(json.dumps(card))
    with pytest.raises(UserError, match=f"{bad}/card.json is not a valid model card .*target label 99 out of range "
                                        "for a model of 10 classes") as e:
        import_model(zoo_copy, bad)
    assert "\n" not in str(e.value)
    assert len(Zoo(zoo_copy).plan()) == len(Zoo(out).plan())  # nothing added


def test_damaged_bookkeeping_and_a_lost_card_are_one_line_errors_not_silence(built, tmp_path):
    """A done model whose card.json is gone was silently left out of `models()` (and so of every board); a garbage
    plan, record or zoo.json gave a JSONDecodeError."""
    import shutil

    out, _ = built
    zoo_dir = tmp_path / "zoo"
    shutil.copytree(out, zoo_dir)
    job, folder, _ = Zoo(zoo_dir).models()[0]
    (folder / "card.json").unlink()
    with pytest.raises(UserError, match=f"damaged model.*{job.id}: its card.json is missing"):
        Zoo(zoo_dir).models()
    rec = Zoo(zoo_dir).record(job.id)
    assert rec.state == "damaged" and rec.errors[-1] == "damaged: its card.json is missing"
    assert build_zoo(tiny_zoo(), zoo_dir, batch_models=3) == {"done": 6}  # retrained
    for name, fix in (("jobs/" + job.id + ".json", "delete it"), ("plan.json", "rebuild"), ("zoo.json", "rebuild")):
        broken = tmp_path / name.replace("/", "-")
        shutil.copytree(zoo_dir, broken)
        (broken / name).write_text("{not json")
        with pytest.raises(UserError, match=f"{name.split('/')[-1]} is damaged .*{fix}"):
            Zoo(broken).status() if name != "zoo.json" else Zoo(broken).config()


def test_status_cli_and_errors(built, tmp_path):
    out, _ = built
    r = subprocess.run([sys.executable, "-m", "trojanbench.cli", "zoo", "status", str(out)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and "done" in r.stdout
    # per kind, the trojans that passed beside those planned (a rejected trojan used to count as a kind the zoo had)
    kinds = Zoo(out).plan()
    done = {rec.id for rec in Zoo(out).status()["done"]}
    expect = {k: (sum(j.id in done for j in kinds if j.trojan and j.trojan.trigger.kind == k),
                  sum(bool(j.trojan and j.trojan.trigger.kind == k) for j in kinds))
              for k in {j.trojan.trigger.kind for j in kinds if j.trojan}}
    assert "trigger kinds (trojans done / planned): " + ", ".join(f"{k} {d}/{n}" for k, (d, n) in sorted(expect.items())) \
        in " ".join(r.stdout.split())
    r = subprocess.run([sys.executable, "-m", "trojanbench.cli", "zoo", "status", str(tmp_path)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "not a zoo" in r.stderr
    r = subprocess.run([sys.executable, "-m", "trojanbench.cli", "zoo", "build", "--config", "nope", "--out",
                        str(tmp_path / "z")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "not found" in r.stderr and "digits-zoo" in r.stderr


def test_a_missing_zoo_or_zoo_json_is_one_line(built, tmp_path):
    """Reading a zoo's config where none was built was a FileNotFoundError traceback (zoo.json)."""
    import shutil

    with pytest.raises(UserError, match="is not a zoo .*trojanbench zoo build"):
        Zoo(tmp_path / "none").config()
    copy = tmp_path / "copy"
    shutil.copytree(built[0], copy)
    (copy / "zoo.json").unlink()
    with pytest.raises(UserError, match="zoo.json is missing; rebuild"):
        Zoo(copy).config()


@pytest.mark.parametrize("script,args", [("detect_dev.py", ["--zoo"]), ("pixel_anomaly_dev.py", []),
                                         ("lat_sweep.py", []), ("retune_dev.py", ["--zoo"])])
def test_the_dev_scripts_say_in_one_line_that_the_dev_zoo_is_not_built(tmp_path, script, args):
    script = Path(__file__).parents[2] / "benchmarks" / script
    r = subprocess.run([sys.executable, str(script), *args, str(tmp_path / "none")], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "not a zoo" in r.stderr, r.stderr[-2000:]
    assert len(r.stderr.strip().splitlines()) == 1


def test_a_zoo_with_difficulty_axes_records_every_models_levels(tmp_path):
    """Poison rate, mode, intensity and the adaptive kinds through a real build: each card says its axis values,
    the poisoned indices are the relabelled samples only, and the axis levels read back from the zoo."""
    from trojanbench.implant import prepare
    from trojanbench.results.axes import EVERY, axis_levels
    from trojanbench.zoo.store import load_poisoned_indices

    cfg = tiny_zoo(models_per_arch=8, trojans={"kinds": ["adaptive-blend", "adaptive-patch"], "rates": [0.01, 0.05],
                                                "mode": ["all-to-one", "all-to-all"], "insidious_fraction": 0.0},
                   intensity={"epochs": [2, 3], "lr_scales": [1.0, 0.5]})
    assert build_zoo(cfg, tmp_path / "zoo", batch_models=8) == {"done": 8}
    zoo = Zoo(tmp_path / "zoo")
    ds = zoo.dataset()
    for job, folder, card in zoo.models():
        assert card.train["epochs"] == job.intensity["epochs"] and card.train["lr"] == job.intensity["lr"]
        if job.trojaned:
            assert card.trojan["poison"] == job.trojan.poison.model_dump()
            p = prepare(ds, job.arch, job.arch_kwargs, job.trojan, seed=card.seed)
            assert card.extra["n_cover"] == len(p.cover_indices) > 0
            assert load_poisoned_indices(folder, card).tolist() == p.poisoned_indices.tolist()
    rates, modes = axis_levels(zoo, "poison_rate"), axis_levels(zoo, "mode")
    assert {v for v in rates.values() if v != EVERY} <= {0.01, 0.05} and EVERY in rates.values()
    assert set(axis_levels(zoo, "epochs").values()) <= {2, 3} and set(modes.values()) - {EVERY} <= {"all-to-one", "all-to-all"}
