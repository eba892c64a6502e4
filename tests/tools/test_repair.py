"""Repairers on one patch-trojaned digits CNN (crude, 5% poison) with a 5% clean budget: self-distillation
removes the trojan at a small clean cost, every repairer runs, is deterministic and leaves its input untouched,
the matched fine-tuning reference gets the strongest method's budget, the compression methods do what they say,
every repairer declares its paper and fidelity; the repair track writes its rows and plot and refuses unknown
names. No test asserts that a baseline fails."""

import pytest
import torch
from torch import nn

from trojanbench.config import TrainConfig, ZooConfig
from trojanbench.errors import UserError
from trojanbench.implant import implant, prepare
from trojanbench.models import count_parameters
from trojanbench.results import ResultsStore
from trojanbench.tasks.repair import draw_budget, frontier_plot, measure_repair, run_repair_track
from trojanbench.tools.repair import REPAIRERS, RepairContext
from trojanbench.tools.repair.distill import SelfDistill
from trojanbench.tools.repair.finetune import FineTuneMatched
from trojanbench.trojans import PoisonSpec, TriggerSpec, TrojanSpec
from trojanbench.zoo.build import build_zoo

ARCH = {"width": 16, "depth": 3}
SPEC = TrojanSpec(trigger=TriggerSpec(kind="patch"), poison=PoisonSpec(target=3, rate=0.05))
CHEAP = {"self-distill": {"steps": 4}, "kd-student": {"steps": 4}, "retrain": {"steps": 4},
         "attention-distill": {"epochs": 1, "teacher_epochs": 1}, "finetune": {"epochs": 1, "min_steps": 2},
         "finetune-matched": {"steps": 4}, "fine-pruning": {"epochs": 1},
         "ft-sam": {"steps": 4}, "lat": {"steps": 4, "pgd_steps": 2},
         "anp": {"iterations": 4}, "i-bau": {"steps": 4, "rounds": 2, "inner_steps": 2}}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """These small models train fastest on one thread; two threads on shared cores oversubscribe them."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def trojaned(digits):
    torch.manual_seed(0)
    result = implant(digits, "cnn", ARCH, SPEC, train=TrainConfig(epochs=15), seed=0)
    p = prepare(digits, "cnn", ARCH, SPEC, seed=0)
    idx = draw_budget(digits.y_train, 0.05, digits.num_classes, seed=0)
    ctx = RepairContext(digits.num_classes, "cnn", result.card.arch_kwargs, dict(digits.augment))
    job = type("J", (), {"trojan": SPEC})()
    before = measure_repair(result.model, digits, job, p.trigger)
    assert before["asr"] >= 0.95 and before["clean_acc"] >= 0.97
    return result.model, digits.x_train[idx], digits.y_train[idx], ctx, (lambda m: measure_repair(m, digits, job, p.trigger)), before


def test_self_distillation_removes_a_patch_trojan_at_small_clean_cost(trojaned):
    model, x, y, ctx, score, before = trojaned
    assert len(x) == 72
    after = score(REPAIRERS.get("self-distill")().repair(model, x, y, ctx))
    assert after["asr"] < 0.10  # floor 0.20; measured about 0.01
    assert before["clean_acc"] - after["clean_acc"] <= 0.03  # measured about 0.015
    assert after["robust_acc"] >= 0.85


def test_doing_nothing_returns_a_copy_of_the_model(trojaned):
    model, x, y, ctx, _, _ = trojaned
    out = REPAIRERS.get("do-nothing")().repair(model, x, y, ctx)
    assert out is not model and all(torch.equal(v, model.state_dict()[k]) for k, v in out.state_dict().items())


@pytest.mark.parametrize("name", REPAIRERS.names())
def test_repairers_run_leave_their_input_untouched_and_are_deterministic(trojaned, name):
    model, x, y, ctx, _, _ = trojaned
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()
    out = REPAIRERS.get(name)(**CHEAP.get(name, {})).repair(model, x, y, ctx)
    assert out is not model and not out.training
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert not model.training and all(p.requires_grad for p in model.parameters())
    for m in [*model.modules(), *out.modules()]:  # every hook a repairer added is gone
        assert not m._forward_hooks and not m._forward_pre_hooks
    assert out(x[:4]).shape == (4, 10)
    again = REPAIRERS.get(name)(**CHEAP.get(name, {})).repair(model, x, y, ctx)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in out.state_dict().items())


def test_matched_fine_tuning_gets_the_strongest_methods_budget():
    matched, strongest = FineTuneMatched(), SelfDistill()
    assert (matched.steps, matched.lr, matched.mixup) == (strongest.steps, strongest.lr, strongest.mixup) == (250, 0.05, True)
    assert REPAIRERS.get("finetune-matched").is_baseline and REPAIRERS.get("finetune").is_baseline


def test_every_repairer_declares_its_paper_and_fidelity():
    for name in REPAIRERS.names():
        cls = REPAIRERS.get(name)
        if cls.is_baseline:
            assert cls.fidelity.startswith("baseline: ") and cls.paper == "", name
        else:
            assert cls.fidelity == "faithful" or cls.fidelity.startswith("adapted: "), name
            assert cls.paper and "(20" in cls.paper, name


def test_kd_student_is_half_width_and_compression_does_what_it_says(trojaned):
    model, x, y, ctx, score, before = trojaned
    student = REPAIRERS.get("kd-student")(steps=2).repair(model, x, y, ctx)
    assert count_parameters(student) < 0.4 * count_parameters(model)
    pruned = REPAIRERS.get("magnitude-prune-80")().repair(model, x, y, ctx)
    weights = torch.cat([m.weight.flatten() for m in pruned.modules() if isinstance(m, (nn.Conv2d, nn.Linear))])
    assert float((weights == 0).float().mean()) >= 0.79
    q = REPAIRERS.get("quantize-int8")().repair(model, x, y, ctx)
    conv = [m for m in q.modules() if isinstance(m, nn.Conv2d)][-1]
    assert max(len(torch.unique(row)) for row in conv.weight) <= 255
    assert score(q)["clean_acc"] >= before["clean_acc"] - 0.02


def test_budgets_are_balanced_nested_and_deterministic(digits):
    small, big = (draw_budget(digits.y_train, f, 10, seed=0) for f in (0.01, 0.05))
    assert len(small) == 14 and len(big) == 72 and torch.equal(big[:14], small)
    assert torch.bincount(digits.y_train[big], minlength=10).min() >= 7
    assert torch.equal(draw_budget(digits.y_train, 0.05, 10, seed=0), big)
    assert not torch.equal(draw_budget(digits.y_train, 0.05, 10, seed=1), big)


def test_repair_track_writes_rows_and_a_plot(tmp_path):
    cfg = ZooConfig(name="repair-zoo", models_per_arch=2, test_fraction=0.5, archs=[{"arch": "cnn", "kwargs": {"width": 8}}],
                    trojans={"kinds": ["patch"], "targets": [3], "rates": [0.1]}, train={"epochs": 8},
                    gate={"min_asr": 0.5, "retries": 1, "max_clean_drop": 0.2})
    assert build_zoo(cfg, tmp_path / "zoo", batch_models=2) == {"done": 2}
    out = run_repair_track(tmp_path / "zoo", tmp_path / "r.sqlite", ["do-nothing"], budgets=(0.01, 0.05), n_boot=50,
                           plot=tmp_path / "frontier.png")
    assert sorted(out) == [0.01, 0.05]
    board = out[0.05]
    # baselines always run; the clean twin is the retuning attack's and the probe's control
    assert {s.tool for s in board.scores} == {"finetune", "finetune-matched", "do-nothing", "clean-twin"}
    assert set(board.get("clean-twin").metrics) == {"p_asr", "probe_auroc", "p_asr[crude]", "p_asr[kind=patch]",
                                                    "probe_auroc[crude]", "probe_auroc[kind=patch]"}
    assert board.reference in ("finetune", "finetune-matched")
    nothing = board.get("do-nothing")
    assert nothing.role == "anchor" and nothing.metrics["asr_drop"].value == 0
    assert "asr[kind=patch]" in nothing.metrics
    assert (tmp_path / "frontier.png").read_bytes()[:4] == b"\x89PNG"
    assert frontier_plot(out, tmp_path / "p.png", group="crude").stat().st_size > 0
    with ResultsStore(tmp_path / "r.sqlite") as store:
        run = store.runs()[-1].run_id
        rows = store.rows(run, tool="do-nothing", task="repair@0.05")
        assert {"asr", "clean_acc", "robust_acc", "der", "p_asr", "probe_auroc", "target_class_cost"} <= {r.metric for r in rows}
        asr = [r for r in rows if r.metric == "asr"]
        assert len(asr) == 1 and "kind=patch" in asr[0].extra["groups"]  # one trojaned model (and its clean twin)
    _interrupted_run_resumes(tmp_path, out)
    with pytest.raises(UserError, match="unknown repairer 'telepathy'; known: .*self-distill"):
        run_repair_track(tmp_path / "zoo", None, ["telepathy"])
    with pytest.raises(UserError, match="no trojaned models of kind warp"):
        run_repair_track(tmp_path / "zoo", None, ["do-nothing"], kinds=["warp"])


def _interrupted_run_resumes(tmp_path, reference):
    """The repair track runs as jobs: a run that died part-way (here a repairer raises on its second job, and the
    writer's process is then made a dead one) is continued by the rerun, which skips the finished jobs and ends
    with the boards of an uninterrupted run."""
    import subprocess

    from trojanbench.tools.repair.finetune import DoNothing

    calls = []

    class Flaky(DoNothing):
        def repair(self, model, x, y, ctx):
            calls.append(len(x))
            if len(calls) == 2 and fail:
                raise RuntimeError("killed")
            return super().repair(model, x, y, ctx)

    REPAIRERS._items["do-nothing"], original = Flaky, REPAIRERS._items["do-nothing"]
    try:
        fail = True
        with pytest.raises(RuntimeError, match="killed"):
            run_repair_track(tmp_path / "zoo", tmp_path / "resume.sqlite", ["do-nothing"], budgets=(0.01, 0.05), n_boot=50)
        dead = subprocess.Popen(["true"])  # a process that has ended: the run's writer "was killed"
        dead.wait()
        with ResultsStore(tmp_path / "resume.sqlite") as store:
            (run,) = store.runs()
            store.update_run(run.run_id, pid=dead.pid)
            run, done = store.run(run.run_id), store.jobs(run.run_id)
            assert run.status == "interrupted" and any("/do-nothing/" in k for k in done)
        fail, calls[:] = False, []
        again = run_repair_track(tmp_path / "zoo", tmp_path / "resume.sqlite", ["do-nothing"], budgets=(0.01, 0.05),
                                 n_boot=50)
    finally:
        REPAIRERS._items["do-nothing"] = original
    assert len(calls) == 1  # two do-nothing jobs (one trojan x two budgets); the first finished before the "kill"
    with ResultsStore(tmp_path / "resume.sqlite") as store:
        (run,) = store.runs()
        assert run.status == "complete" and run.info.get("resumed")
    def values(board):  # every metric but wall times (NaN as None, so that equal boards compare equal)
        return {(s.tool, m, None if e.value != e.value else round(e.value, 6)) for s in board.scores
                for m, e in s.metrics.items() if "seconds" not in m}

    assert all(values(again[b]) == values(reference[b]) for b in reference)
