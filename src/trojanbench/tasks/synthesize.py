"""Feature synthesis, scored two ways on every all-to-one trojan of a zoo (optionally one split):

- *specificity*: each synthesizer gets the model, the target label and a small clean sample (the first 200
  test images); its stamp is pasted on the remaining clean test images of other classes, and the share sent to
  the target is its transfer ASR. The same synthesizer on the model's clean twin, toward the same label, is the
  control (`transfer_asr_clean_twin`); the board ranks by specificity, the difference of the two paired per
  trojan: a method that sends images to the target on the clean twin as well is finding adversarial features,
  not the trojan.
- *multiple choice* (`mc_accuracy`, up to 8 options, chance 1/k for k distinct candidates): an automatic judge
  independent of the audited model picks which candidate trigger the stamp resembles (tasks/multiple_choice.py);
  a proportion with a Wilson interval. Every tool faces the same candidates for a trojan, shown in an order of
  its own (ties go to the option shown first).

Both are computed per trojan and aggregated by results.boards (bootstrap over models; Wilson for the multiple
choice), split by trigger kind and crude vs insidious. The "all-methods" condition pools every non-baseline
method: for multiple choice the judge sums their (normalised) scores, as a person shown every tool's images
would; for transfer ASR the auditor keeps the stamp that works best on its own clean sample. The same questions
are written as a survey bank for people (`trojanbench survey serve`). A panel per run shows each method's stamp
beside the true trigger on the same image."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ..implant import prepare
from ..results.boards import Board, BoardSpec, Column, compute_board, model_row, spec_row, tool_info_rows
from ..results.store import recording
from ..tools.detect import DetectContext
from ..tools.synthesize import SYNTHESIZERS
from ..tools.synthesize.random_prior import trigger_prior
from ..train.evaluate import predict
from ..zoo.build import Zoo
from ..zoo.store import load_model
from . import groups_of, population, role_of
from .multiple_choice import Judge, draw_options, find, option_order, render, trigger_key

TASK, TASK_MC = "synthesize", "synthesize-mc"
N_CONTEXT = 200
N_PROBES = 32
ALL = "all-methods"


def board_specs(pop: str) -> list[BoardSpec]:
    transfer = BoardSpec(
        task=TASK, title="Feature synthesis: does the stamp fire on the trojan and not on its clean twin?",
        key="specificity", population=pop,
        columns=[Column(name="specificity", source="specificity", header="specificity"),
                 Column(name="transfer_asr", source="transfer_asr", header="transfer ASR"),
                 Column(name="transfer_asr_clean_twin", source="transfer_asr_clean_twin", header="on clean twin"),
                 Column(name="seconds_per_model", source="seconds", stat="timing", header="s/model", groups=False)],
        main=["specificity", "transfer_asr", "transfer_asr_clean_twin", "specificity[kind=patch]",
              "specificity[insidious]", "seconds_per_model"],
        note="specificity = transfer ASR of the stamp on the trojaned model minus that of the same method's stamp on "
             "the clean twin, paired per trojan: high transfer on both means adversarial features, not the trojan")
    mc = BoardSpec(
        task=TASK_MC, title="Feature synthesis: which of the candidate triggers is it? (8-way multiple choice, "
                            "independent judge)", key="mc_accuracy", population=pop,
        columns=[Column(name="mc_accuracy", source="mc_correct", stat="proportion", header="accuracy"),
                 Column(name="chance", source="chance", header="chance")],
        main=["mc_accuracy", "chance", "mc_accuracy[kind=patch]", "mc_accuracy[crude]", "mc_accuracy[insidious]"],
        note="the judge compares the tool's images with each candidate's, knowing nothing of the audited model; "
             "chance is 1/(number of distinct candidates)")
    return [transfer, mc]


def run_synthesize_track(zoo_dir: str | Path, results, tools: list[str] | None = None, seed: int = 0,
                         split: str | None = None, max_models: int | None = None, n_boot: int = 2000, progress=None,
                         figures: str | Path | None = None, bank: str | Path | None = None,
                         device: str = "cpu") -> list[Board]:
    """Run every synthesizer (or `tools`) on the all-to-one trojans of a zoo (`split`, first `max_models`) and on
    their clean twins; write per-model rows into `results` (a RunTarget, a store path — then the track is a run of
    its own — or None), the survey bank into `bank`. Returns the transfer board and the multiple-choice board.
    `device`: where the audited models and the synthesizers run (the images stay on the CPU; tools move what they
    feed the model); the judge's reference model stays on the CPU, so the multiple-choice scoring of a stamp does
    not depend on the device."""
    names = tools or SYNTHESIZERS.names()
    for n in names:
        SYNTHESIZERS.get(n)
    pooled = [n for n in names if not SYNTHESIZERS.get(n).is_baseline]
    conditions = names + ([ALL] if len(pooled) > 1 else [])
    zoo = Zoo(zoo_dir)
    zoo.plan()
    cfg = zoo.config()
    ds = zoo.dataset()
    models = zoo.trojaned(split, max_models)
    everything = zoo.models()
    dev = torch.device(device)
    ctx = DetectContext(ds.x_test[:N_CONTEXT], ds.y_test[:N_CONTEXT], ds.num_classes, dev, seed=seed,
                        prior=trigger_prior(cfg))
    x_eval, y_eval = ds.x_test[N_CONTEXT:], ds.y_test[N_CONTEXT:]
    reference = next((f for j, f, c in everything if j.split == "train" and not c.trojaned), None)
    judge = Judge(x_eval[:N_PROBES], load_model(reference)[0] if reference is not None else None)
    library = judge.library([c for _, _, c in everything])  # one option per distinct look on the judge's probes
    questions: list[dict] = []
    panel = None
    specs = board_specs(population(zoo, split, models, "models (all-to-one trojans)"))
    config = {"track": "synthesize", "zoo": cfg.model_dump(), "tools": names, "split": split, "max_models": max_models}
    rows = []
    with recording(results, "track:synthesize", config, seed) as store:

        def emit(tool, job, card, values: dict, version: str):
            role = "tool" if tool == ALL else role_of(SYNTHESIZERS.get(tool))
            new = [model_row(tool, card.id, TASK_MC if metric in ("mc_correct", "chance") else TASK, metric, v, role=role,
                             groups=groups_of(job), version=version, seed=seed, job=job.id)
                   for metric, v in values.items()]
            rows.extend(new)
            store.write(new)

        store.write([spec_row(s) for s in specs] + tool_info_rows(TASK, "synthesize", SYNTHESIZERS, names))
        for m_index, (job, folder, card) in enumerate(models):
            model, _ = load_model(folder, dev)
            twin = load_model(zoo.root / "models" / job.twin, dev)[0] if job.twin and zoo._valid_model(job.twin) else None
            target_label = job.trojan.poison.target
            others = x_eval[y_eval != target_label]
            ctx_others = ctx.x_clean[ctx.y_clean != target_label]
            true = find(library, trigger_key(card))
            q_seed = seed * 100_003 + m_index
            options, answer = draw_options(true, library, q_seed)
            option_sigs = [judge.signature(judge.apply_candidate(o)) for o in options]
            stamps, twin_stamps, mc_scores = {}, {}, {}
            for name in names:
                tool = SYNTHESIZERS.get(name)()
                start = time.perf_counter()
                stamp = tool.synthesize(model, target_label, ctx)
                seconds = time.perf_counter() - start
                stamps[name] = stamp
                asr = _asr(model, stamp, others, target_label)
                mc_scores[name] = judge.scores(judge.signature(stamp.apply(judge.probes)), option_sigs)
                order = option_order(len(options), q_seed, name)
                choice = judge.choose(mc_scores[name], order)
                values = {"transfer_asr": asr, "mc_correct": float(choice == answer), "chance": 1 / len(options),
                          "seconds": seconds}
                if twin is not None:
                    twin_stamps[name] = SYNTHESIZERS.get(name)().synthesize(twin, target_label, ctx)
                    values["transfer_asr_clean_twin"] = _asr(twin, twin_stamps[name], others, target_label)
                    values["specificity"] = asr - values["transfer_asr_clean_twin"]
                emit(name, job, card, values, tool.version)
                questions.append(_question(job, card, name, [stamp], options, answer, choice, judge, order))
                if progress:
                    progress()
            if ALL in conditions:
                order = option_order(len(options), q_seed, ALL)
                rec = _all_methods(model, twin, stamps, twin_stamps, mc_scores, pooled, ctx_others, others,
                                   target_label, answer, order)
                rec["chance"] = 1 / len(options)
                if "transfer_asr_clean_twin" in rec:
                    rec["specificity"] = rec["transfer_asr"] - rec["transfer_asr_clean_twin"]
                choice = rec.pop("choice")
                emit(ALL, job, card, rec, "1")
                questions.append(_question(job, card, ALL, [stamps[n] for n in pooled], options, answer, choice, judge,
                                           order))
            if panel is None and job.trojan.trigger.kind == "patch":
                trigger = prepare(ds, job.arch, job.arch_kwargs, job.trojan, seed=card.seed).trigger
                panel = (others[:1], trigger.apply(others[:1]), stamps, target_label)
        if store.stored and figures is not None and panel is not None:
            from ..report.html import figure_row

            path = _panel(panel, Path(figures) / "synthesize-stamps.png")
            store.write(figure_row("synthesize", TASK, path, "a patch trojan's true trigger beside what each "
                                   "synthesizer produced, pasted on the same clean image (top: the stamp, bottom: "
                                   "its mask)", seed))
        if bank is not None:
            # a trojan whose zoo has a single distinct trigger has nothing to choose from: no question for people
            asked = [q for q in questions if len(q["options"]) > 1]
            if asked:  # a zoo whose trojans all share one look has no question to ask
                _write_bank(Path(bank), asked, cfg.name)
    return [compute_board(rows, s, n_boot, seed) for s in specs]


def _asr(model, stamp, x, target) -> float:
    return float((predict(model, stamp.apply(x)) == target).float().mean())


def _all_methods(model, twin, stamps, twin_stamps, mc_scores, pooled, ctx_others, others, target, answer,
                 order) -> dict:
    """The pooled condition: the judge sums every method's z-scored option scores (ties to the option shown first
    in `order`); the transfer stamp is the one that does best on the auditor's own clean sample (no ground truth
    used)."""
    total = sum((s - s.mean()) / s.std().clamp_min(1e-8) for s in (mc_scores[n] for n in pooled))
    choice = Judge.choose(total, order)
    best = max(pooled, key=lambda n: _asr(model, stamps[n], ctx_others, target))
    rec = {"transfer_asr": _asr(model, stamps[best], others, target), "mc_correct": float(choice == answer),
           "seconds": 0.0, "choice": choice}
    if twin is not None and twin_stamps:
        best_twin = max(pooled, key=lambda n: _asr(twin, twin_stamps[n], ctx_others, target))
        rec["transfer_asr_clean_twin"] = _asr(twin, twin_stamps[best_twin], others, target)
    return rec


def _question(job, card, tool, stamps, options, answer, choice, judge, order) -> dict:
    """One survey question: the tool's stamps on a few probe images, the candidates on the first probe in the
    tool's order (`answer` and `choice` index the options as drawn; the bank's index them as shown)."""
    probes = judge.probes[:3] if len(stamps) == 1 else judge.probes[:1]
    return {"tool": tool, "model_id": card.id, "trigger_kind": job.trojan.trigger.kind, "insidious": bool(job.trojan.insidious),
            "images": [img for s in stamps for img in s.apply(probes)],
            "options": [render(options[i].trigger, judge.probes[:1])[0] for i in order],
            "answer": order.index(answer), "judge_choice": order.index(choice)}


def _write_bank(folder: Path, questions: list[dict], zoo_name: str) -> Path:
    from ..survey.bank import write_bank_from_tensors

    return write_bank_from_tensors(folder, questions, f"Which trigger is it? ({zoo_name})", zoo=zoo_name)


def _panel(panel, path: Path) -> Path:
    from ..report.plots import pyplot, save

    clean, triggered, stamps, target = panel
    plt = pyplot()
    cols = [("true trigger", triggered[0], None)] + [(n, s.apply(clean)[0], s.mask) for n, s in stamps.items()]
    fig, axes = plt.subplots(2, len(cols), figsize=(1.7 * len(cols), 3.6), dpi=110, squeeze=False)
    for j, (name, img, mask) in enumerate(cols):
        axes[0][j].imshow(img.permute(1, 2, 0).squeeze().numpy(), cmap="gray", vmin=0, vmax=1)
        axes[0][j].set_title(name, fontsize=7)
        if mask is not None:
            axes[1][j].imshow(mask.numpy(), cmap="magma", vmin=0, vmax=1)
        for ax in axes[:, j]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"toward target {target}", fontsize=9)
    fig.tight_layout()
    return save(fig, path)
