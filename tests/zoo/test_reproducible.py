"""Reproducible, verifiable zoos: a job's weights do not depend on its chunk or executor, the cache identity
holds the trainer version, damaged models are reported and retrained, and one process builds a zoo at a time."""

import json
import shutil
import subprocess
import sys
import time

import pytest

from trojanbench.config import ZooConfig
from trojanbench.errors import UserError
from trojanbench.train import TRAINER_VERSION
from trojanbench.zoo import build as zoo_build
from trojanbench.zoo.build import Zoo, build_zoo, cache_folder, cache_key
from trojanbench.zoo.lock import ZooLock
from trojanbench.zoo.store import load_model


def small_zoo(**overrides) -> ZooConfig:
    """8 digits CNNs (4 clean, 4 patch-trojaned twins), trained briefly; no gate, so nothing is retried."""
    base = {"name": "repro", "models_per_arch": 8, "archs": [{"arch": "cnn", "kwargs": {"width": 8, "depth": 2}}],
            "trojans": {"kinds": ["patch"], "targets": [1, 2], "insidious_fraction": 0.0},
            "train": {"epochs": 2}, "gate": {"min_asr": 0.0, "max_clean_drop": 1.0, "retries": 0}}
    return ZooConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("repro") / "z"
    assert build_zoo(small_zoo(), out, batch_models=4) == {"done": 8}  # two chunks of four
    return out


def weights(zoo_dir) -> dict[str, str]:
    return {job.id: card.weights_sha256 for job, _, card in Zoo(zoo_dir).models()}


def test_a_job_gets_the_same_weights_alone_as_in_a_chunk_of_four(built, tmp_path):
    build_zoo(small_zoo(), tmp_path / "serial", executor="serial")  # every job in a chunk of its own
    assert weights(tmp_path / "serial") == weights(built)
    for _, _, card in Zoo(built).models():
        assert card.extra["trainer_version"] == TRAINER_VERSION and card.extra["torch_threads"] == 1


def test_a_damaged_model_is_reported_then_retrained_to_the_same_weights(built, tmp_path):
    out = tmp_path / "z"
    shutil.copytree(built, out)
    zoo = Zoo(out)
    before = weights(out)
    trojaned, folder, _ = next(m for m in zoo.models() if m[0].trojaned)
    clean, clean_folder, _ = next(m for m in zoo.models() if not m[0].trojaned)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])  # truncated
    (clean_folder / "model.safetensors").unlink()  # missing
    status = zoo.status()
    assert {r.id for r in status["damaged"]} == {trojaned.id, clean.id} and len(status["done"]) == 6
    assert "does not match its card" in " ".join(next(r for r in status["damaged"] if r.id == trojaned.id).errors)
    with pytest.raises(UserError, match="2 damaged model") as e:
        zoo.models()
    assert "\n" not in str(e.value)

    log_lines = (out / "log.jsonl").read_text().count("\n")
    assert build_zoo(small_zoo(), out, batch_models=4) == {"done": 8}
    events = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()[log_lines:]]
    assert sorted(e["job"] for e in events if e["event"] == "start") == sorted([trojaned.id, clean.id])
    assert not zoo.status()["damaged"] and len(zoo.status()["done"]) == 8
    assert weights(out) == before  # retrained with the seed that built it: the same bits again
    for _, f, _ in zoo.models():
        load_model(f)  # every hash verified
    assert sorted(p.name.split("-")[0] for p in (out / "damaged").iterdir()) == sorted([trojaned.id, clean.id])


def test_changed_poisoned_indices_make_a_model_damaged(built, tmp_path):
    out = tmp_path / "z"
    shutil.copytree(built, out)
    job, folder, _ = next((j, f, c) for j, f, c in Zoo(out).models() if j.trojaned)
    (folder / "poisoned.json").write_text("[1, 2, 3]")
    assert [r.id for r in Zoo(out).status()["damaged"]] == [job.id]


def test_the_cache_key_holds_the_trainer_version_and_an_old_zoo_is_refused(built, tmp_path, monkeypatch):
    cfg = small_zoo()
    key, folder = cache_key(cfg), cache_folder(cfg)
    assert folder.name == f"repro-{key}" and cache_key(small_zoo(train={"epochs": 3})) != key
    monkeypatch.setattr(zoo_build, "TRAINER_VERSION", TRAINER_VERSION + 1)
    assert cache_key(cfg) != key and cache_folder(cfg) != folder
    monkeypatch.undo()

    out = tmp_path / "old"
    shutil.copytree(built, out)
    body = json.loads((out / "zoo.json").read_text())
    assert body["trainer_version"] == TRAINER_VERSION and Zoo(out).config() == cfg
    del body["trainer_version"]  # as zoos were written before the version was recorded
    (out / "zoo.json").write_text(json.dumps(body))
    assert Zoo(out).trainer_version() == 1
    with pytest.raises(UserError, match=f"trainer version 1, this is version {TRAINER_VERSION}") as e:
        build_zoo(cfg, out)
    assert "\n" not in str(e.value)


def test_two_builds_into_one_folder_one_waits_for_the_other(tmp_path, capfd):
    cfg = small_zoo(models_per_arch=4, train={"epochs": 1})
    out = tmp_path / "z"
    script = ("from trojanbench.config import ZooConfig; from trojanbench.zoo.build import build_zoo; "
              f"build_zoo(ZooConfig.model_validate_json({cfg.model_dump_json()!r}), {str(out)!r}, batch_models=1)")
    first = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not ((out / "log.jsonl").is_file() and '"start"' in (out / "log.jsonl").read_text()):
        assert first.poll() is None and time.time() < deadline, "the first build should be under way"
        time.sleep(0.05)
    # the whole build is still ahead of the first process: a second one told not to wait stops at once
    with pytest.raises(UserError, match="is being built by another process") as e:
        build_zoo(cfg, out, lock_timeout=0)
    assert "\n" not in str(e.value) and f"pid {first.pid}" in str(e.value)
    # told to wait, it waits, then finds every job done and trains nothing
    assert build_zoo(cfg, out) == {"done": 4}
    assert first.wait(timeout=60) == 0, first.stderr.read()
    assert "waiting for it to finish" in capfd.readouterr().err
    events = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    started = [e["job"] for e in events if e["event"] == "start"]
    assert len(started) == len(set(started)) == 4
    for _, folder, _ in Zoo(out).models():
        load_model(folder)


def test_a_lock_left_by_a_killed_process_does_not_block(tmp_path):
    script = ("import time; from trojanbench.zoo.lock import ZooLock; "
              f"ZooLock({str(tmp_path)!r}).__enter__(); print('held', flush=True); time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(UserError, match="being built by another process"):
        ZooLock(tmp_path, timeout=0).__enter__()
    holder.kill()  # SIGKILL: the kernel drops its lock
    holder.wait()
    with ZooLock(tmp_path, timeout=10):
        pass
