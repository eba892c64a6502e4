"""Build a zoo: plan, run chunks through an executor, gate, store; resumable at any moment.

Layout of a zoo folder:
    zoo.json            the config it was built from and the trainer version that built it (a second build
                        must match both)
    plan.json           every job (id, architecture, seed, trojan, split, twin)
    jobs/<id>.json      each job's record: state (pending/done/failed/rejected), attempts, errors, history
    models/<id>/        each finished model (model.safetensors + card.json [+ poisoned.json])
    damaged/<id>-<time>/  finished models found damaged later, moved aside before their job was retrained
    log.jsonl           one line per training attempt started and per result, for auditing
    .build.lock         held (flock) by the one process building or importing into the zoo
Only the driver holding the lock writes here. A model folder counts as done only with a valid card (written
last, atomically) whose weights and poisoned indices still match their hashes, so a build killed with SIGKILL
at any point resumes without retraining finished jobs, and a model damaged later is retrained.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError

from ..config import ZooConfig
from ..errors import UserError, first_error
from ..train import TRAINER_VERSION
from ..utils import atomic_write_text, canonical_json, sha256_bytes
from .executors import EXECUTORS, shared_pool
from .lock import LOCK, ZooLock
from .plan import Job, expand
from .store import CARD, ModelCard, check_files, load_card, save_model_bytes
from .worker import ChunkItem, ChunkTask, JobResult

# "damaged": the record says done but the model folder no longer verifies (never written to a record: a build
# moves the folder aside and trains the job again)
STATES = ("pending", "done", "failed", "rejected", "damaged")
PARALLEL_EXECUTORS = ("pool", "ray")  # the executors that run `jobs` chunks at once


def cache_key(cfg: ZooConfig) -> str:
    """The identity of the zoo `cfg` builds: its config and the trainer version. A zoo cached under another key
    (another config, or built by other training code) is never reused."""
    return sha256_bytes(canonical_json({"config": cfg.model_dump(), "trainer_version": TRAINER_VERSION}).encode())[:12]


def cache_folder(cfg: ZooConfig) -> Path:
    """Where the benchmark keeps the zoo of `cfg`: $TROJANBENCH_CACHE/zoos/<name>-<cache_key>."""
    from ..data.cifar10 import cache_dir

    return cache_dir() / "zoos" / f"{cfg.name}-{cache_key(cfg)}"


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

    def _read(self, path: Path, parse):
        """`parse(json)` of one of the zoo's bookkeeping files; a missing or damaged one is a one-line error naming
        it."""
        if not self.exists:
            raise UserError(f"{self.root} is not a zoo (no plan.json); build one with `trojanbench zoo build`")
        try:
            return parse(json.loads(path.read_text()))
        except FileNotFoundError:
            raise UserError(f"zoo {self.root}: {path.name} is missing; rebuild the zoo into a new folder") from None
        except (ValueError, TypeError, KeyError) as e:  # invalid JSON (or UTF-8), or a body of the wrong shape
            fix = ("delete it: `trojanbench zoo build` checks the job against its model folder again"
                   if path.parent.name == "jobs" else "rebuild the zoo into a new folder")
            raise UserError(f"zoo {self.root}: {path.name} is damaged ({first_error(e)}); {fix}") from None

    def _zoo_json(self) -> dict:
        return self._read(self.root / "zoo.json", dict)

    def config(self) -> ZooConfig:
        return self._read(self.root / "zoo.json", lambda body: ZooConfig.model_validate(
            {k: v for k, v in body.items() if k != "trainer_version"}))

    def trainer_version(self) -> int:
        """The trainer version that built this zoo (1 for zoos from before versions were recorded)."""
        return int(self._zoo_json().get("trainer_version", 1))

    def dataset(self):
        """The dataset the zoo's config names (with its data root and options), as every task needs it."""
        from ..data import load_dataset

        data = self.config().data
        return load_dataset(data.name, **({"data_root": data.data_root} if data.data_root else {}), **data.options)

    def trojaned(self, split: str | None = None, max_models: int | None = None) -> list[tuple[Job, Path, ModelCard]]:
        """The all-to-one trojaned models (`Job.targeted`: a single target label the trigger sends inputs to),
        optionally of one split and capped; a one-line error if there are none."""
        models = [(j, f, c) for j, f, c in self.models(split=split) if j.targeted]
        models = models[:max_models] if max_models else models
        if not models:
            raise UserError(f"zoo {self.root} has no all-to-one trojaned models" + (f" in split {split!r}" if split else ""))
        return models

    def plan(self) -> list[Job]:
        return self._read(self.root / "plan.json", lambda body: [Job.model_validate(j) for j in body])

    def record(self, job_id: str) -> JobRecord:
        """The job's record, with its state checked against the disk: a job whose model landed before the build
        died counts as done; a done job whose model no longer verifies is "damaged", the reason last in errors."""
        path = self.root / "jobs" / f"{job_id}.json"
        rec = self._read(path, lambda body: JobRecord(**body)) if path.is_file() else JobRecord(job_id)
        card, problem = self.check_model(job_id)
        if rec.state == "done" and card is None:
            rec.state = "damaged"
            rec.errors = (rec.errors or []) + [f"damaged: {problem or self._missing(job_id)}"]
        elif rec.state != "done" and card is not None:
            rec.state, rec.model_id = "done", None  # the model landed but the build died before its record did
        return rec

    def check_model(self, job_id: str) -> tuple[ModelCard | None, str | None]:
        """(card, None) for a finished model whose card, weights and poisoned indices all verify; (None, what is
        wrong) for a damaged one; (None, None) when there is no card (no model, or a write cut short)."""
        folder = self.root / "models" / job_id
        if not (folder / CARD).is_file():
            return None, None
        try:
            card = load_card(folder)
        except UserError as e:
            return None, str(e)
        problem = check_files(folder, card)
        return (None, problem) if problem else (card, None)

    def _valid_model(self, job_id: str) -> ModelCard | None:
        return self.check_model(job_id)[0]

    def _missing(self, job_id: str) -> str:
        """What is missing of a model its record says is done (`check_model` found no card)."""
        folder = self.root / "models" / job_id
        return f"its {CARD} is missing" if folder.is_dir() else "its model folder is missing"

    def models(self, split: str | None = None) -> list[tuple[Job, Path, ModelCard]]:
        """Every finished model (optionally of one zoo split) with its job and card, each verified against its
        hashes. A damaged model is an error (one line), never silently left out of what is scored."""
        out, damaged = [], []
        for job in self.plan():
            if split and job.split != split:
                continue
            card, problem = self.check_model(job.id)
            if card is not None:
                out.append((job, self.root / "models" / job.id, card))
            elif problem:
                damaged.append(f"{job.id}: {problem}")
            elif (self.root / "jobs" / f"{job.id}.json").is_file() and self.record(job.id).state == "damaged":
                damaged.append(f"{job.id}: {self._missing(job.id)}")  # done by its record, no card on disk
        if damaged:
            raise UserError(f"zoo {self.root} has {len(damaged)} damaged model(s) ({damaged[0]}); "
                            f"`trojanbench zoo build` with its config and --out {self.root} retrains them")
        return out

    def status(self) -> dict[str, list[JobRecord]]:
        """Every job's record by state (STATES), each model verified against its hashes."""
        by_state: dict[str, list[JobRecord]] = {s: [] for s in STATES}
        for job in self.plan():
            rec = self.record(job.id)
            by_state[rec.state].append(rec)
        return by_state

    # -- writing -------------------------------------------------------------------------------------------
    def check_free(self) -> None:
        """A one-line error when the folder holds something other than a zoo (a run's results, a model, files of
        the user's): a zoo's files would land among them. A zoo.json alone is a build killed before its plan."""
        if self.exists or not self.root.is_dir():
            return

        def ours(name: str) -> bool:  # or a temp file of a zoo.json write cut short (`init` drops it)
            return name in (LOCK, "zoo.json") or name.startswith(".zoo.json.") and name.endswith(".tmp")

        if other := sorted(p.name for p in self.root.iterdir() if not ours(p.name)):
            raise UserError(f"{self.root} is not empty ({', '.join(other[:3])}{', ...' if len(other) > 3 else ''}) "
                            "and holds no zoo; build into a new or empty folder")

    def init(self, cfg: ZooConfig) -> list[Job]:
        """Create the zoo (or check that the one here was built from `cfg` by this trainer). Hold the lock."""
        self.root.mkdir(parents=True, exist_ok=True)
        jobs = expand(cfg)
        body = {**json.loads(cfg.model_dump_json()), "trainer_version": TRAINER_VERSION}
        for stray in self.root.glob("**/.*.tmp"):  # temp files of writes cut short by a kill
            if stray.is_dir():
                shutil.rmtree(stray, ignore_errors=True)
            else:
                stray.unlink(missing_ok=True)
        if self.exists:
            built_from = {k: v for k, v in self._zoo_json().items() if k != "trainer_version"}
            if built_from != json.loads(cfg.model_dump_json()):
                raise UserError(f"{self.root} holds a zoo built from another config; use another --out or delete it")
            if self.trainer_version() != TRAINER_VERSION:
                raise UserError(f"{self.root} was built by trainer version {self.trainer_version()}, this is version "
                                f"{TRAINER_VERSION} (its models would not match new ones); use another --out or delete it")
            return self.plan()
        atomic_write_text(self.root / "zoo.json", json.dumps(body, indent=1))
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
              batch_models: int = 16, device: str = "cpu", progress=None, threads: int = 1,
              lock_timeout: float | None = None) -> dict[str, int]:
    """Build (or finish building, or repair) the zoo in `out`. Returns the count of jobs per state.

    One process builds a zoo at a time: a second one waits for the first (saying so on stderr), or with
    `lock_timeout` seconds spent (0: at once) stops with a one-line UserError. Damaged models (weights or
    poisoned indices that no longer match their card, or a missing folder) are moved to `damaged/` and their
    jobs retrained with the seed of the attempt that built them, which gives the same weights again at the
    same thread count. `threads`: torch threads per training chunk, whatever the executor (one by default, so
    a zoo's weights do not depend on the machine's core count; use the pool or Ray executor for more cores);
    the count used is on every card."""
    run = EXECUTORS.get(executor)
    expand(cfg)  # a config error (an unknown architecture, a bad trigger variant) before any folder is made
    zoo = Zoo(out)
    zoo.check_free()
    with ZooLock(zoo.root, timeout=lock_timeout):
        plan = zoo.init(cfg)
        records = {j.id: zoo.record(j.id) for j in plan}
        for rec in records.values():
            if rec.state == "damaged":
                _set_aside(zoo, rec)
            if rec.state == "done" and rec.model_id is None:  # the model landed, then the build died before its record
                rec.model_id = zoo._valid_model(rec.id).id
                zoo.log(event="recovered", job=rec.id, model=rec.model_id)
                zoo.write_record(rec)
            if rec.state == "failed" and not rec.id.startswith("imported-"):  # a new build: a fresh set of retries
                rec.state = "pending"
                rec.attempts = 0
        workers = jobs if executor in PARALLEL_EXECUTORS else 1
        with shared_pool():  # the phases (clean models, trojans, retries) share the pool's workers
            _train_pending(zoo, cfg, plan, records, run, jobs, workers, address, batch_models, device, threads, progress)
    return dict(Counter(r.state for r in records.values()))


def _set_aside(zoo: Zoo, rec: JobRecord) -> None:
    """Move a damaged model out of models/ and send its job back to pending, to be trained with the seed of the
    attempt that built it (`_chunks` derives the seed from the attempt count)."""
    folder = zoo.root / "models" / rec.id
    if folder.exists():
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        (zoo.root / "damaged").mkdir(exist_ok=True)
        os.replace(folder, zoo.root / "damaged" / f"{rec.id}-{stamp}")
    zoo.log(event="damaged", job=rec.id, problem=(rec.errors or [""])[-1])
    if rec.id.startswith("imported-"):  # trained elsewhere: nothing here can train it again
        rec.state = "failed"
        rec.errors = (rec.errors or []) + ["an imported model is damaged: import it again"]
    else:
        last = (rec.history or [{}])[-1]
        # the attempt that built it: the last in its history, unless the record was written before it landed
        rec.attempts = last["attempt"] if last and last.get("rejected") is None else rec.attempts
        rec.state, rec.model_id = "pending", None
    zoo.write_record(rec)


def _train_pending(zoo: Zoo, cfg: ZooConfig, plan: list[Job], records: dict[str, JobRecord], run, jobs: int,
                   workers: int, address: str | None, batch_models: int, device: str, threads: int, progress) -> None:
    by_id = {j.id: j for j in plan}
    twin_acc: dict[str, float] = {}

    def twin_accuracy(job: Job) -> float | None:
        if job.twin and job.twin not in twin_acc:
            card = zoo._valid_model(job.twin)
            if card is not None:
                twin_acc[job.twin] = card.metrics["clean_accuracy"]
        return twin_acc.get(job.twin) if job.twin else None

    total = len(plan)
    done_before = sum(r.state in ("done", "rejected") for r in records.values())
    pending = any(r.state == "pending" for r in records.values())  # a built zoo gets no bar (it read 0.0 models/min)
    bar_ctx = progress(total, done_before) if progress and pending else None
    advance = bar_ctx.__enter__() if bar_ctx else (lambda n=1: None)
    try:
        # clean models first: trojaned ones need their twin (gate, insidious start point)
        for phase in ([j for j in plan if not j.trojaned], [j for j in plan if j.trojaned]):
            while True:
                todo = [j for j in phase if records[j.id].state == "pending"]
                if not todo:
                    break
                tasks = _chunks(todo, records, zoo, cfg, batch_models, device, threads, workers)
                for results in run(tasks, jobs=jobs, address=address):
                    for res in results:
                        finished = _land(zoo, by_id[res.job_id], records[res.job_id], res, cfg, twin_accuracy)
                        if finished:
                            advance(1)
    finally:
        if bar_ctx:
            bar_ctx.__exit__(None, None, None)


def _chunks(todo: list[Job], records, zoo: Zoo, cfg: ZooConfig, batch_models: int, device: str,
            threads: int | None = None, workers: int = 1) -> list[ChunkTask]:
    """The chunks that train `todo`, one setup (group) per chunk. A group's models are shared out evenly over as
    few chunks as `batch_models` (the most per chunk) allows, but over at least one per worker where the group has
    that many models, so that no worker of a pool idles while another trains a whole group. A job's weights do not
    depend on its chunk (`train_chunk`): the split changes the wall time only."""
    groups: dict[tuple, list[Job]] = {}
    for j in todo:  # one chunk trains with one setup: group by architecture, insidiousness and intensity draw
        insidious = bool(j.trojan and j.trojan.insidious)
        key = (j.arch, json.dumps(j.arch_kwargs, sort_keys=True), insidious, json.dumps(j.intensity, sort_keys=True))
        groups.setdefault(key, []).append(j)
    tasks = []
    for (_, _, insidious, _), jobs in groups.items():
        train = jobs[0].train_config(cfg)
        if insidious and cfg.insidious.epochs:
            train = train.model_copy(update={"epochs": cfg.insidious.epochs})
        n_chunks = max(-(-len(jobs) // max(1, batch_models)), min(len(jobs), max(1, workers)))
        base, extra = divmod(len(jobs), n_chunks)
        bounds = [k * base + min(k, extra) for k in range(n_chunks + 1)]  # the first `extra` chunks take one more
        for lo, hi in zip(bounds, bounds[1:]):
            items = []
            for j in jobs[lo:hi]:
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
                tasks.append(ChunkTask(cfg.data, train, items, cfg.insidious, device=device, threads=threads))
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
    zoo.plan()  # a clear error if it is not a zoo, before the lock creates anything
    _, card = load_model(model_dir)  # verifies every hash and that the weights fit the architecture
    theirs, ours = card.dataset.get("name"), zoo.config().data.name
    if theirs != ours:  # every task would fail on it later (other input shapes or classes)
        raise UserError(f"{model_dir} was trained on {theirs}; the zoo {zoo_dir} holds models of {ours}")
    try:  # the card's own checks passed (`load_card`); its trojan must also be one the zoo's tasks can rebuild
        job = Job(id=f"imported-{card.id}", arch=card.arch, arch_kwargs=card.arch_kwargs, seed=card.seed,
                  trojan=TrojanSpec(**card.trojan) if card.trojan else None, split=split)
    except (ValidationError, TypeError) as e:
        raise UserError(f"cannot import {model_dir}: its card's trojan is not valid ({first_error(e)})") from None
    with ZooLock(zoo.root):
        plan = zoo.plan()
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
