"""Build a zoo: plan, run chunks through an executor, gate, store; resumable at any moment.

Layout of a zoo folder:
    zoo.json            the config it was built from (a second build must match it)
    plan.json           every job (id, architecture, seed, trojan, split, twin)
    jobs/<id>.json      each job's record: state (pending/done/failed/rejected), attempts, errors, history
    models/<id>/        each finished model (model.safetensors + card.json [+ poisoned.json])
    log.jsonl           one line per training attempt started and per result, for auditing
Only the driver writes here. A model folder counts as done only with a valid card (written last,
atomically), so a build killed with SIGKILL at any point resumes without retraining finished jobs.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ..config import ZooConfig
from ..errors import UserError
from ..utils import atomic_write_text
from .executors import EXECUTORS
from .plan import Job, expand
from .store import CARD, ModelCard, load_card, save_model_bytes
from .worker import ChunkItem, ChunkTask, JobResult

STATES = ("pending", "done", "failed", "rejected")


@dataclass
class JobRecord:
    id: str
    state: str = "pending"
    attempts: int = 0
    errors: list[str] | None = None
    history: list[dict] | None = None
    model_id: str | None = None

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in self.__dict__.items()}, indent=1, sort_keys=True)


class Zoo:
    """A zoo folder: its plan, job records and models."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    # -- reading -------------------------------------------------------------------------------------------
    @property
    def exists(self) -> bool:
        return (self.root / "plan.json").is_file()

    def config(self) -> ZooConfig:
        return ZooConfig.model_validate_json((self.root / "zoo.json").read_text())

    def dataset(self):
        """The dataset the zoo's config names (with its data root and options), as every task needs it."""
        from ..data import load_dataset

        data = self.config().data
        return load_dataset(data.name, **({"data_root": data.data_root} if data.data_root else {}), **data.options)

    def trojaned(self, split: str | None = None, max_models: int | None = None) -> list[tuple[Job, Path, ModelCard]]:
        """The all-to-one trojaned models (those with a single target label), optionally of one split and capped;
        a one-line error if there are none."""
        models = [(j, f, c) for j, f, c in self.models(split=split) if j.trojaned and j.trojan.poison.target is not None]
        models = models[:max_models] if max_models else models
        if not models:
            raise UserError(f"zoo {self.root} has no all-to-one trojaned models" + (f" in split {split!r}" if split else ""))
        return models

    def plan(self) -> list[Job]:
        if not self.exists:
            raise UserError(f"{self.root} is not a zoo (no plan.json); build one with `trojanbench zoo build`")
        return [Job.model_validate(j) for j in json.loads((self.root / "plan.json").read_text())]

    def record(self, job_id: str) -> JobRecord:
        path = self.root / "jobs" / f"{job_id}.json"
        rec = JobRecord(**json.loads(path.read_text())) if path.is_file() else JobRecord(job_id)
        if rec.state != "done" and self._valid_model(job_id):
            rec.state, rec.model_id = "done", None  # the model landed but the build died before its record did
        return rec

    def _valid_model(self, job_id: str) -> ModelCard | None:
        folder = self.root / "models" / job_id
        if not (folder / CARD).is_file():
            return None
        try:
            return load_card(folder)
        except UserError:
            return None

    def models(self, split: str | None = None) -> list[tuple[Job, Path, ModelCard]]:
        """Every finished model (optionally of one zoo split) with its job and card."""
        out = []
        for job in self.plan():
            if split and job.split != split:
                continue
            card = self._valid_model(job.id)
            if card is not None:
                out.append((job, self.root / "models" / job.id, card))
        return out

    def status(self) -> dict[str, list[JobRecord]]:
        by_state: dict[str, list[JobRecord]] = {s: [] for s in STATES}
        for job in self.plan():
            rec = self.record(job.id)
            by_state[rec.state].append(rec)
        return by_state

    # -- writing -------------------------------------------------------------------------------------------
    def init(self, cfg: ZooConfig) -> list[Job]:
        self.root.mkdir(parents=True, exist_ok=True)
        jobs = expand(cfg)
        cfg_json = cfg.model_dump_json(indent=1)
        for stray in self.root.glob("**/.*.tmp"):  # temp files of writes cut short by a kill
            if stray.is_dir():
                shutil.rmtree(stray, ignore_errors=True)
            else:
                stray.unlink(missing_ok=True)
        if self.exists:
            old = json.loads((self.root / "zoo.json").read_text())
            if old != json.loads(cfg_json):
                raise UserError(f"{self.root} holds a zoo built from another config; use another --out or delete it")
            return self.plan()
        atomic_write_text(self.root / "zoo.json", cfg_json)
        atomic_write_text(self.root / "plan.json", json.dumps([j.model_dump() for j in jobs], indent=1))
        return jobs

    def write_record(self, rec: JobRecord) -> None:
        atomic_write_text(self.root / "jobs" / f"{rec.id}.json", rec.to_json())

    def log(self, **event) -> None:
        with open(self.root / "log.jsonl", "a") as f:
            f.write(json.dumps({"time": round(time.time(), 3), **event}) + "\n")
            f.flush()
            os.fsync(f.fileno())


def build_zoo(cfg: ZooConfig, out: str | Path, executor: str = "batched", jobs: int = 2, address: str | None = None,
              batch_models: int = 16, device: str = "cpu", progress=None) -> dict[str, int]:
    """Build (or finish building) the zoo in `out`. Returns the count of jobs per state."""
    run = EXECUTORS.get(executor)
    zoo = Zoo(out)
    plan = zoo.init(cfg)
    by_id = {j.id: j for j in plan}
    records = {j.id: zoo.record(j.id) for j in plan}
    for rec in records.values():
        if rec.state == "done" and rec.model_id is None:  # the model landed, then the build died before its record
            rec.model_id = zoo._valid_model(rec.id).id
            zoo.log(event="recovered", job=rec.id, model=rec.model_id)
            zoo.write_record(rec)
        if rec.state == "failed":  # a new build gives failed jobs a fresh set of retries
            rec.state = "pending"
            rec.attempts = 0
    twin_acc: dict[str, float] = {}

    def twin_accuracy(job: Job) -> float | None:
        if job.twin and job.twin not in twin_acc:
            card = zoo._valid_model(job.twin)
            if card is not None:
                twin_acc[job.twin] = card.metrics["clean_accuracy"]
        return twin_acc.get(job.twin) if job.twin else None

    total = len(plan)
    done_before = sum(r.state in ("done", "rejected") for r in records.values())
    bar_ctx = progress(total, done_before) if progress else None
    advance = bar_ctx.__enter__() if bar_ctx else (lambda n=1: None)
    try:
        # clean models first: trojaned ones need their twin (gate, insidious start point)
        for phase in ([j for j in plan if not j.trojaned], [j for j in plan if j.trojaned]):
            while True:
                todo = [j for j in phase if records[j.id].state == "pending"]
                if not todo:
                    break
                tasks = _chunks(todo, records, zoo, cfg, batch_models, device)
                for results in run(tasks, jobs=jobs, address=address):
                    for res in results:
                        finished = _land(zoo, by_id[res.job_id], records[res.job_id], res, cfg, twin_accuracy)
                        if finished:
                            advance(1)
    finally:
        if bar_ctx:
            bar_ctx.__exit__(None, None, None)
    return dict(Counter(r.state for r in records.values()))


def _chunks(todo: list[Job], records, zoo: Zoo, cfg: ZooConfig, batch_models: int, device: str) -> list[ChunkTask]:
    groups: dict[tuple, list[Job]] = {}
    for j in todo:
        insidious = bool(j.trojan and j.trojan.insidious)
        groups.setdefault((j.arch, json.dumps(j.arch_kwargs, sort_keys=True), insidious), []).append(j)
    tasks = []
    for (_, _, insidious), jobs in groups.items():
        train = cfg.train
        if insidious and cfg.insidious.epochs:
            train = train.model_copy(update={"epochs": cfg.insidious.epochs})
        for i in range(0, len(jobs), max(1, batch_models)):
            items = []
            for j in jobs[i:i + batch_models]:
                attempt = records[j.id].attempts
                twin = None
                if insidious:
                    twin_dir = zoo.root / "models" / (j.twin or "")
                    if zoo._valid_model(j.twin or "") is None:
                        records[j.id].state = "failed"
                        records[j.id].errors = (records[j.id].errors or []) + ["its clean twin did not build"]
                        zoo.write_record(records[j.id])
                        continue
                    twin = (twin_dir / "model.safetensors").read_bytes()
                seed = j.seed + 7919 * attempt  # a retry uses another seed
                items.append(ChunkItem(j, seed, attempt, twin))
                zoo.log(event="start", job=j.id, attempt=attempt, seed=seed)
            if items:
                tasks.append(ChunkTask(cfg.data, train, items, cfg.insidious, device=device))
    return tasks


def _land(zoo: Zoo, job: Job, rec: JobRecord, res: JobResult, cfg: ZooConfig, twin_accuracy) -> bool:
    """Store one result and update its record; returns True when the job has reached a final state."""
    rec.attempts += 1
    history = rec.history or []
    if not res.ok:
        rec.errors = (rec.errors or []) + [f"attempt {res.attempt}: {res.error}"]
        rec.state = "failed" if rec.attempts > cfg.gate.retries else "pending"
        zoo.log(event="error", job=job.id, attempt=res.attempt, error=res.error)
        zoo.write_record(rec)
        return rec.state == "failed"
    metrics = res.card["metrics"]
    reason = None
    if job.trojaned:
        twin = twin_accuracy(job)
        if metrics["attack_success_rate"] < cfg.gate.min_asr:
            reason = f"ASR {metrics['attack_success_rate']:.3f} < gate {cfg.gate.min_asr}"
        elif twin is not None and metrics["clean_accuracy"] < twin - cfg.gate.max_clean_drop:
            reason = f"clean accuracy {metrics['clean_accuracy']:.3f} more than {cfg.gate.max_clean_drop} below twin {twin:.3f}"
    history.append({"attempt": res.attempt, "seed": res.seed, "metrics": metrics, "rejected": reason})
    rec.history = history
    if reason is not None:
        rec.state = "rejected" if rec.attempts > cfg.gate.retries else "pending"
        zoo.log(event="gate", job=job.id, attempt=res.attempt, reason=reason)
        zoo.write_record(rec)
        return rec.state == "rejected"
    card = save_model_bytes(zoo.root / "models" / job.id, ModelCard(**res.card), res.weights, res.poisoned)
    rec.state, rec.model_id = "done", card.id
    zoo.log(event="done", job=job.id, attempt=res.attempt, model=card.id)
    zoo.write_record(rec)
    return True


def import_model(zoo_dir: str | Path, model_dir: str | Path, split: str = "test") -> str:
    """Add a verified model folder to an existing zoo as a finished job of its own."""
    from ..trojans import TrojanSpec
    from .store import load_model

    if split not in ("train", "test"):
        raise UserError(f"split must be train or test, not {split!r}")
    zoo = Zoo(zoo_dir)
    plan = zoo.plan()
    _, card = load_model(model_dir)  # verifies every hash and that the weights fit the architecture
    job = Job(id=f"imported-{card.id}", arch=card.arch, arch_kwargs=card.arch_kwargs, seed=card.seed,
              trojan=TrojanSpec(**card.trojan) if card.trojan else None, split=split)
    if any(j.id == job.id for j in plan):
        raise UserError(f"{model_dir} is already in {zoo_dir}")
    dst = zoo.root / "models" / job.id
    tmp = zoo.root / "models" / f".{job.id}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(model_dir, tmp)
    os.replace(tmp, dst)
    atomic_write_text(zoo.root / "plan.json", json.dumps([j.model_dump() for j in plan + [job]], indent=1))
    zoo.write_record(JobRecord(job.id, state="done", attempts=0, model_id=card.id))
    zoo.log(event="import", job=job.id, source=str(model_dir))
    return job.id
