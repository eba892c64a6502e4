"""Audit one model you were handed: `trojanbench audit MODEL --data NAME|DIR [--arch ...] [--zoo DIR]`.

The practitioner's questions, answered from the tools and a named reference zoo:
1. **Is it trojaned?** Every model-level detector scores the model. Each score becomes P(trojaned) through a
   Platt curve fitted on the reference zoo's held-out split (`calibrate.py`), where every detector was scored
   the same way (same clean sample, same seed, learned detectors fitted on the zoo's training split). The
   headline probability is the detector whose out-of-fold cross-entropy on that split is lowest; every
   detector's probability is shown beside it. When the audited model is itself one of the reference models
   (a model of the zoo), its unit (it and its clean twin) is left out of every fit and every reference statistic.
2. **Toward which class?** The label named by the detector with the best target accuracy on the reference
   zoo's held-out trojans; its confidence is that accuracy with a Wilson interval.
3. **With what trigger?** Feature synthesizers reconstruct a trigger for that label (each with its transfer
   ASR: the fraction of clean images of other classes it sends to the label), shown beside attribution maps
   toward the label on the best reconstruction.
4. **What would fixing it cost?** The repairs that worked best on the reference zoo (its repair board: ASR after
   and clean-accuracy cost, with intervals), when the reference results store holds a repair track of that zoo.

The reference scores come from a results store (`--reference STORE`: the latest complete run whose detect track
scored exactly this zoo's held-out models; without it, `runs/default/results.sqlite` when `trojanbench run --config digits-bench` left one that
did), or are computed into `OUT/reference.sqlite` as a run of their own (and reused from there by the next audit
with the same zoo, detectors and seed). A model is recognised as a zoo model by its weights (sha256 of its
state), whatever layout it arrived in. See docs/audit.md.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..results.stats import Estimate, wilson
from .calibrate import calibration_metrics, fit_platt, out_of_fold
from .load import LoadedModel, declared_shape, load_audited_model

DEFAULT_SYNTHESIZERS = ("trigger-inversion", "adversarial-patch", "exemplar")
DEFAULT_ATTRIBUTORS = ("saliency", "integrated-gradients", "gradcam")
N_CLEAN = 200  # the auditor's clean sample, as in the detect track (`tasks.detect.detection_context`)
REFERENCE_KIND = "audit-reference"
DEFAULT_REFERENCE = Path("runs/default/results.sqlite")  # `trojanbench run` writes it; used when it scored the zoo


@dataclass
class DetectorResult:
    tool: str
    role: str
    score: float
    probability: float  # Platt-calibrated on the reference split (without the audited model's unit)
    target_label: int | None
    reference_n: int  # reference models the curve was fitted on
    auroc: float  # on the reference split, raw scores
    calibration: dict[str, Estimate]  # out-of-fold cross_entropy, brier, ece on the reference split
    target_accuracy: Estimate | None  # on the reference split's all-to-one trojans


@dataclass
class Reconstruction:
    tool: str
    transfer_asr: float
    image: str  # figure path


@dataclass
class AuditResult:
    model: dict  # format, arch, file, card id
    data: str
    zoo: str
    zoo_name: str
    reference: str  # store path and run id
    detectors: list[DetectorResult]
    headline: str  # tool whose probability is the verdict
    p_trojaned: float
    verdict: str  # "trojaned" or "clean"
    target: dict | None  # label, tool, accuracy (Estimate), agreeing
    reconstructions: list[Reconstruction] = field(default_factory=list)
    attribution_figure: str | None = None
    repairs: list[dict] = field(default_factory=list)
    repairs_note: str = ""
    left_out: list[str] = field(default_factory=list)  # reference model ids left out (the audited unit)
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


def _dataset(data: str, shape: tuple[int, int, int] | None = None):
    """A dataset by name, or a folder of images read to fit `shape` (C, H, W): grayscale for one channel, resized."""
    from ..data import DATASETS, load_dataset

    if Path(data).is_dir():
        if shape is None:
            return load_dataset("imagefolder", data_root=data)
        c, h, w = shape
        return load_dataset("imagefolder", data_root=data, grayscale=c == 1, size=h if h == w else (h, w))
    if data in DATASETS:
        return load_dataset(data)
    raise UserError(f"--data {data!r} is neither a folder of images nor a dataset ({', '.join(DATASETS.names())})")


def check_fits(model: torch.nn.Module, ds, where: str, expected: tuple[int, int, int] | None = None) -> None:
    """The model takes the data's images and gives one logit per class, or a one-line error (naming the `expected`
    image shape where the audit knows it)."""
    from ..data import shape_text
    from ..utils import evaluating

    x = ds.x_test[:2]
    device = next(iter(model.parameters()), torch.empty(0)).device
    try:
        with torch.no_grad(), evaluating(model):  # the caller's modes come back even when the forward fails
            out = model(x.to(device))
    except Exception as e:  # noqa: BLE001 - whatever the forward raises, the user gets one line
        wants = f", expected {shape_text(expected)}" if expected is not None else ""
        raise UserError(f"{where} does not take the data's images {tuple(x.shape[1:])} (C, H, W){wants}: "
                        f"{type(e).__name__}: {str(e).splitlines()[0][:150]}") from None
    if out.dim() != 2 or out.shape[1] != ds.num_classes:
        raise UserError(f"{where} gives outputs of shape {tuple(out.shape)}; the data has {ds.num_classes} classes")


_FITTED: dict[tuple, object] = {}  # learned detectors fitted on a zoo's training split, kept for the next audit


def _digest(x: torch.Tensor) -> str:
    from ..utils import sha256_bytes

    return sha256_bytes(x.detach().cpu().contiguous().numpy().tobytes())[:16]


def member_of(zoo, model: torch.nn.Module, split: str | None = "test") -> str | None:
    """The card id of the zoo model (of `split`) whose weights are exactly `model`'s, in whatever layout the model
    arrived (a state dict re-saved from a zoo model is recognised), or None."""
    from ..utils import sha256_bytes
    from ..zoo.store import weights_bytes

    digest = sha256_bytes(weights_bytes(model))
    return next((c.id for _, _, c in zoo.models(split=split) if c.weights_sha256 == digest), None)


def _units(zoo) -> dict[str, str]:
    """job id -> its unit (a trojan and its clean twin share the clean job's id)."""
    units = {}
    for job in zoo.plan():
        units[job.id] = job.twin if job.trojaned and job.twin else job.id
    return units


def _reference_run(store_path: Path, test_ids: set[str], names: list[str]):
    """The latest complete run of `store_path` whose detect-model rows cover exactly `test_ids` for every tool."""
    from ..results import ResultsStore

    with ResultsStore(store_path) as store:
        for run in sorted((r for r in store.runs() if r.finished is not None), key=lambda r: -r.finished):
            rows = [r for r in store.rows(run.run_id) if r.task == "detect-model"]
            scored = {}
            for r in rows:
                if r.metric == "score":
                    scored.setdefault(r.tool, set()).add(r.model_id)
            if all(scored.get(n) == test_ids for n in names):
                return run, store.rows(run.run_id)
    return None, None


def reference_rows(zoo, names: list[str], reference: Path | None, out: Path, seed: int, device: str, progress=None):
    """The reference split's per-model rows (and where they came from): from `reference`, or computed into
    `out/reference.sqlite` (reused there when a complete run already covers these detectors)."""
    from ..results import ResultsStore
    from ..results.store import recording
    from ..tasks.detect import detection_context, score_model_detectors

    test_ids = {c.id for _, _, c in zoo.models(split="test")}
    if reference is not None:
        if not Path(reference).is_file():
            raise UserError(f"no results store at {reference}")
        run, rows = _reference_run(Path(reference), test_ids, names)
        if run is None:
            raise UserError(f"{reference} holds no complete run whose detect track scored the held-out split of zoo "
                            f"{zoo.root} with {', '.join(names)}; run `trojanbench run --zoo {zoo.root} --track detect` "
                            "or leave out --reference")
        return rows, f"{reference} run {run.run_id}"
    if DEFAULT_REFERENCE.is_file():  # `trojanbench run --config digits-bench` scores the default reference zoo
        run, rows = _reference_run(DEFAULT_REFERENCE, test_ids, names)
        if run is not None and run.seed == seed:
            return rows, f"{DEFAULT_REFERENCE} run {run.run_id}"
    path = out / "reference.sqlite"
    if path.is_file():
        run, rows = _reference_run(path, test_ids, names)
        if run is not None and run.seed == seed:
            return rows, f"{path} run {run.run_id}"
    ds, ctx = detection_context(zoo, n_clean=N_CLEAN, seed=seed, device=device)
    config = {"zoo": zoo.config().model_dump(), "tools": names, "n_clean": N_CLEAN}
    with recording(path, REFERENCE_KIND, config, seed, info={"zoo": str(zoo.root), "zoo_name": zoo.config().name}) as writer:
        score_model_detectors(zoo, names, ctx, ds.image_shape, writer, progress)
    run_id = writer.target.run_id
    with ResultsStore(path) as store:
        return store.rows(run_id), f"{path} run {run_id}"


def reference_stats(rows, name: str, units: dict[str, str], left_out=(), n_boot: int = 2000, seed: int = 0) -> dict:
    """What the reference split says about detector `name` (its models in `left_out` excluded): the Platt curve on
    every remaining model, the AUROC of the raw scores, the out-of-fold calibration metrics (a unit left out of
    each fit) and the target accuracy on all-to-one trojans (a Wilson interval; None if it names no target)."""
    from ..results.stats import auroc

    ref = [r for r in rows if r.task == "detect-model" and r.tool == name and r.metric == "score"
           and r.value is not None and r.model_id not in left_out]
    s = np.array([r.value for r in ref])
    y = np.array([r.extra["label"] for r in ref])
    u = np.array([units.get(r.extra.get("job"), r.model_id) for r in ref])
    if len(set(y.tolist())) < 2:
        raise UserError(f"the reference split lacks clean or trojaned models scored by {name}")
    hits = [r.value for r in rows if r.task == "detect-model" and r.tool == name and r.metric == "target_hit"
            and r.model_id not in left_out and r.value is not None]
    return {"platt": fit_platt(s, y), "auroc": auroc(y, s), "n_clean": int((y == 0).sum()), "n_trojaned": int(y.sum()),
            "calibration": calibration_metrics(out_of_fold(s, y, u), y, n_boot, seed),
            "target_accuracy": wilson(int(sum(hits)), len(hits)) if hits else None}


def _repairs(rows, seed: int, n_boot: int) -> tuple[list[dict], str]:
    from ..results.boards import board_specs, compute_board

    specs = {t: s for t, s in board_specs(rows).items() if t.startswith("repair")}
    if not specs:
        return [], ("the reference results hold no repair track of this zoo: run `trojanbench run --zoo ZOO --track "
                    "detect,repair` and pass its store with --reference to see what fixing it would cost")
    task, spec = min(specs.items())
    board = compute_board(rows, spec, n_boot, seed)
    out = []
    for s in board.scores:
        m = s.metrics
        out.append({"tool": s.tool, "role": s.role, "verdict": s.verdict,
                    "asr": m.get("asr"), "clean_cost": m.get("clean_cost"), "n": (m.get("asr") or Estimate(np.nan)).n})
    out.sort(key=lambda r: (np.inf if r["asr"] is None or np.isnan(r["asr"].value) else r["asr"].value,
                            r["clean_cost"].value if r["clean_cost"] is not None else np.inf))
    return out, f"repair board {task} of the reference run ({board.spec.population})"


TRAINING = ("epochs", "lr", "batch_size", "optimizer")  # the card's training settings compared with the zoo's


def unlike_the_zoo(loaded: LoadedModel, zoo, zoo_data) -> list[str]:
    """How the audited model differs from every model of the reference zoo: its architecture (the names and shapes
    of its parameters and buffers, however the architecture was named) and, where its card says, its training
    (`TRAINING`). Empty when some zoo model is like it. A model unlike the zoo's is scored by curves fitted on
    models that are not like it: an implanted CNN twice the zoo's width read P(trojaned) 0.009. `zoo_data`: the
    zoo's dataset, whose arguments (`models.data_kwargs`) the warning leaves out of the zoo's architectures."""
    from ..models import build_model, data_kwargs

    def shapes(model) -> tuple:
        return tuple((k, tuple(v.shape)) for k, v in model.state_dict().items())

    cards = [c for _, _, c in zoo.models()]
    kinds = {(c.arch, repr(sorted(c.arch_kwargs.items()))): c for c in cards}
    zoo_shapes = {shapes(build_model(c.arch, **c.arch_kwargs)) for c in kinds.values()}
    out = []
    if shapes(loaded.model) not in zoo_shapes:
        data_args = set(data_kwargs(zoo_data))  # what the data sets, not the architecture (in_channels, mean, ...)
        zoo_archs = sorted({f"{c.arch} " + ", ".join(f"{k}={v}" for k, v in sorted(c.arch_kwargs.items())
                                                     if k not in data_args)
                            for c in kinds.values()})
        out.append(f"its architecture ({loaded.arch}: parameter shapes) is none of the zoo's ({'; '.join(zoo_archs)})")
    train = loaded.card.train if loaded.card else {}
    for key in TRAINING:
        seen = sorted({str(c.train[key]) for c in cards if key in c.train})
        if key in train and seen and str(train[key]) not in seen:
            out.append(f"{key} {train[key]} (the zoo's: {', '.join(seen)})")
    return out


def headline_warnings(head: DetectorResult, rows: list, left_out: list[str]) -> list[str]:
    """What the headline probability cannot say: the audited model's score lies outside the reference models'
    scores (the Platt curve is extrapolated), or even the best detector predicts the reference models no better
    than a constant 0.5 (out-of-fold cross-entropy not below ln 2: `audit --tools random` read "trojaned")."""
    out = []
    ref = [r.value for r in rows if r.task == "detect-model" and r.metric == "score" and r.tool == head.tool
           and r.model_id not in left_out and r.value is not None]
    if ref and not min(ref) <= head.score <= max(ref):
        out.append(f"its {head.tool} score, {head.score:.4g}, lies outside the reference models' range "
                   f"[{min(ref):.4g}, {max(ref):.4g}]: the probability extrapolates the curve")
    ce = head.calibration["cross_entropy"].value
    if ce >= np.log(2):  # (NaN: a reference too small to say)
        out.append(f"no detector predicts the reference models better than a constant 0.5 (the best out-of-fold "
                   f"cross-entropy, {head.tool}'s, is {ce:.3f}, not below ln 2 = 0.693): the verdict says nothing")
    return out


def audit(model_path: str | Path, data: str, out: str | Path, arch: str | None = None, arch_params: dict | None = None,
          zoo: str | Path | None = None, reference: str | Path | None = None, detectors: list[str] | None = None,
          synthesizers: list[str] | None = None, attributors: list[str] | None = None, seed: int = 0,
          device: str = "cpu", n_boot: int = 2000, progress=None) -> AuditResult:
    """Audit one model (see the module docstring); writes `out/audit.json`, `out/index.html` and the figures."""
    from ..tasks import role_of
    from ..tools.attribute import ATTRIBUTORS
    from ..tools.detect import DETECTORS, DetectContext
    from ..tools.synthesize import SYNTHESIZERS
    from ..zoo.build import Zoo

    start = time.perf_counter()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder")
    if detectors is not None and not detectors:
        raise UserError("no detector named: the audit's verdict needs at least one")
    for registry, chosen in ((DETECTORS, detectors), (SYNTHESIZERS, synthesizers), (ATTRIBUTORS, attributors)):
        for n in chosen or []:
            registry.get(n)  # one line for an unknown name, before any work (not only once a target is named)
    zoo = Zoo(_default_zoo() if zoo is None else zoo)
    zoo.plan()  # one line if it is not a zoo
    zds = zoo.dataset()
    # a folder of images is read to fit the model: the shape it declares (card, --arch-param, BackdoorBench's
    # img_size), else the reference zoo's (the audit's data must have it)
    shape = (declared_shape(model_path, arch_params) or zds.image_shape) if Path(data).is_dir() else None
    ds = _dataset(data, shape)
    loaded = load_audited_model(model_path, ds, arch, arch_params, device)
    check_fits(loaded.model, ds, str(model_path), shape)
    warnings = []
    if zds.image_shape != ds.image_shape or zds.num_classes != ds.num_classes:
        raise UserError(f"reference zoo {zoo.root} holds models of {zds.num_classes} classes on {zds.image_shape} images; "
                        f"the audited data has {ds.num_classes} classes on {ds.image_shape}: build a reference zoo on "
                        "data like the model's (`trojanbench zoo build`) and pass it with --zoo")
    if member_of(zoo, loaded.model, split="train"):
        warnings.append("this model is in the reference zoo's training split: the learned detectors were fitted on it, "
                        "so their verdicts on it are not a test")
    if zds.name != ds.name:
        warnings.append(f"the reference zoo was trained on {zds.name}, the audit's data is {ds.name}: its calibration may "
                        "not transfer")
    if unlike := unlike_the_zoo(loaded, zoo, zds):
        warnings.append(f"this model is unlike every model of the reference zoo: {'; '.join(unlike)}. Its probabilities "
                        "come from curves fitted on the zoo's models and may not carry over; a reference zoo of models "
                        "like it (`trojanbench zoo build`, then --zoo) would")
    names = [n for n in DETECTORS.names() if detectors is None or n in detectors]
    out.mkdir(parents=True, exist_ok=True)
    rows, ref_where = reference_rows(zoo, names, Path(reference) if reference else None, out, seed, device, progress)

    units = _units(zoo)
    own_id = member_of(zoo, loaded.model)
    by_model = {r.model_id: r for r in rows if r.task == "detect-model" and r.metric == "score"}
    own_unit = units.get(by_model[own_id].extra.get("job")) if own_id in by_model else None
    left_out = sorted({m for m, r in by_model.items() if own_unit and units.get(r.extra.get("job")) == own_unit})

    # the audited model is scored with the zoo's training split for learned detectors, on the audit data's clean sample
    ctx = DetectContext(ds.x_test[:N_CLEAN], ds.y_test[:N_CLEAN], ds.num_classes, torch.device(device), seed)
    train = None
    results = []
    for name in names:
        cls = DETECTORS.get(name)
        key = (str(zoo.root), name, seed, device, _digest(ctx.x_clean))
        det = _FITTED.get(key) or cls()
        if det.learned and key not in _FITTED:
            if train is None:
                from ..zoo.store import load_model

                train = [(j, load_model(f, device)[0]) for j, f, _ in zoo.models(split="train")]
            det.fit([m for _, m in train], [int(j.trojaned) for j, _ in train], ctx)
            _FITTED[key] = det
        d = det.detect(loaded.model, ctx)
        ref = reference_stats(rows, name, units, left_out, n_boot, seed)
        results.append(DetectorResult(
            tool=name, role=role_of(cls), score=float(d.score), probability=float(ref["platt"]([d.score])[0]),
            target_label=None if d.target_label is None else int(d.target_label), reference_n=ref["platt"].n,
            auroc=ref["auroc"], calibration=ref["calibration"], target_accuracy=ref["target_accuracy"]))
        if progress:
            progress()
    head = min(results, key=lambda r: (r.calibration["cross_entropy"].value, r.tool))
    p = head.probability
    warnings += headline_warnings(head, rows, left_out)
    target = _target(results)
    res = AuditResult(model={"format": loaded.format, "arch": loaded.arch, "file": str(model_path),
                             "id": own_id, "arch_kwargs": {k: v for k, v in loaded.arch_kwargs.items()
                                                           if k not in ("mean", "std")}, **{k: v for k, v in loaded.info.items() if k != "file"}},
                      data=ds.name, zoo=str(zoo.root), zoo_name=zoo.config().name, reference=ref_where,
                      detectors=results, headline=head.tool, p_trojaned=p, verdict="trojaned" if p >= 0.5 else "clean",
                      target=target, left_out=left_out, warnings=warnings)
    if target is not None:
        _reconstruct(res, loaded, ds, ctx, target["label"], synthesizers, attributors, out / "figures", seed)
    res.repairs, res.repairs_note = _repairs(rows, seed, n_boot)
    res.seconds = time.perf_counter() - start
    from ..report.audit import write_audit

    write_audit(res, out)
    return res


def _target(results: list[DetectorResult]) -> dict | None:
    """The label named by the detector with the best reference target accuracy (ties: more reference trojans)."""
    named = [r for r in results if r.target_label is not None and r.target_accuracy is not None]
    if not named:
        return None
    best = max(named, key=lambda r: (r.target_accuracy.value, r.target_accuracy.n, r.tool))
    agree = sorted(r.tool for r in results if r.target_label == best.target_label)
    return {"label": best.target_label, "tool": best.tool, "accuracy": best.target_accuracy, "agreeing": agree,
            "named": {r.tool: r.target_label for r in results if r.target_label is not None}}


def _reconstruct(res: AuditResult, loaded: LoadedModel, ds, ctx, label: int, synthesizers, attributors, figures: Path,
                 seed: int) -> None:
    """Synthesized triggers for `label` (transfer ASR on clean images of other classes) and attribution maps toward
    `label` on the best one."""
    from ..report.plots import audit_panel
    from ..tools.attribute import ATTRIBUTORS
    from ..tools.synthesize import SYNTHESIZERS
    from ..train.evaluate import predict

    others = ds.x_test[ds.y_test != label][:N_CLEAN]
    stamps = {}
    for name in synthesizers if synthesizers is not None else DEFAULT_SYNTHESIZERS:
        stamp = SYNTHESIZERS.get(name)().synthesize(loaded.model, label, ctx)
        asr = float((predict(loaded.model, stamp.apply(others)) == label).float().mean())
        stamps[name] = (stamp, asr)
    if not stamps:
        return
    best = max(stamps, key=lambda n: stamps[n][1])
    x = stamps[best][0].apply(others[:1])
    maps = {}
    for name in attributors if attributors is not None else DEFAULT_ATTRIBUTORS:
        tool = ATTRIBUTORS.get(name)(seed=seed).fit_reference(ctx.x_clean)
        maps[name] = tool.attribute(loaded.model, x, label)[0].detach().cpu().numpy()
    figures.mkdir(parents=True, exist_ok=True)
    for name, (stamp, asr) in stamps.items():
        mask = [("its mask", None, stamp.mask)] if stamp.mask is not None else []
        path = audit_panel([("clean", others[0], None), (name, stamp.apply(others[:1])[0], None)] + mask,
                           figures / f"synth-{name}.png", f"{name}: transfer ASR {asr:.0%} toward {label}")
        res.reconstructions.append(Reconstruction(name, asr, str(path.relative_to(figures.parent))))
    res.reconstructions.sort(key=lambda r: -r.transfer_asr)
    path = audit_panel([(f"{best} applied", x[0], None)] + [(n, None, m) for n, m in maps.items()],
                       figures / "attribution.png", f"attribution toward {label} on the {best} reconstruction")
    res.attribution_figure = str(path.relative_to(figures.parent))


def _default_zoo() -> Path:
    from ..bench import zoo_cache_dir
    from ..zoo.plan import load_zoo_config

    path = zoo_cache_dir(load_zoo_config("digits-bench"))
    if not path.is_dir():
        raise UserError(f"the default reference zoo (digits-bench) is not built yet at {path}: run "
                        "`trojanbench run --config digits-bench` once, or name a zoo with --zoo")
    return path


__all__ = ["AuditResult", "DetectorResult", "audit", "load_audited_model"]
