"""The multiple-choice judge's ceiling and floor on a zoo: how often it picks the true trigger when a tool hands it
the true trigger itself (the perfect tool; should be 1.0 on every kind), and how often when a tool hands it a
random draw from the zoo's trigger prior (the random-prior baseline; the floor a real tool must clear, near the
chance level 1/k). Same probes, reference network, library, options and option orders as the synthesize track.

    .venv/bin/python benchmarks/judge_ceiling.py                      # digits-bench, its held-out split
    .venv/bin/python benchmarks/judge_ceiling.py --zoo /work/zoos/digits-dev --split all --planned \
        --out benchmarks/results/judge_ceiling-dev.json              # where the judge's choices are checked

The main fields are for the held-out split (what the leaderboards score); `all_splits` repeats them over every
trojan of the zoo (the held-out split of digits-bench happens to hold no natural-feature trojan, and nothing
here is fitted on the zoo). `--planned` adds the trojans of the plan that the zoo's quality gate rejected (the
judge needs only their trigger; the dev zoo lost all its warp trojans that way). Without --zoo the `--config` zoo
(digits-bench) is built once under $TROJANBENCH_CACHE and reused. The perfect tool applies the true
trigger with placements of its own (a patch at a random place lands elsewhere than in the option's picture). The
random prior is scored as the track scores it (one draw per trojan, context seed 0) and as its expectation over
`--draws` draws per trojan; `chance` is the mean of 1/k.
Writes benchmarks/results/judge_ceiling.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter, defaultdict
from pathlib import Path
from types import SimpleNamespace

import torch

from trojanbench.results.provenance import write_benchmark
from trojanbench.tasks.multiple_choice import (
    Judge,
    chance,
    draw_options,
    find,
    option_order,
    render,
    rendering_distance,
    trigger_key,
)
from trojanbench.tools.detect import DetectContext
from trojanbench.tools.synthesize import TriggerStamp
from trojanbench.tools.synthesize.random_prior import RandomPrior, trigger_prior
from trojanbench.trojans import make_trigger
from trojanbench.zoo.build import Zoo, build_zoo, cache_folder
from trojanbench.zoo.plan import load_zoo_config
from trojanbench.zoo.store import load_model

HERE = Path(__file__).parent
N_CONTEXT, N_PROBES = 200, 32  # as tasks/synthesize.py


def _by_kind(recs: list[dict], field: str) -> dict:
    kinds = defaultdict(list)
    for r in recs:
        kinds[r["kind"]].append(r[field])
    out = {k: {"value": round(sum(v) / len(v), 4), "n": len(v)} for k, v in sorted(kinds.items())}
    out["overall"] = {"value": round(sum(r[field] for r in recs) / len(recs), 4), "n": len(recs)}
    return out


def picked(question, stamp, tool: str) -> float:
    """1.0 if the judge picks the true option for `stamp`, with the options shown in `tool`'s order, as the track."""
    judge, sigs, answer, seed = question
    order = option_order(len(sigs), seed, tool)
    return float(judge.choose(judge.scores(judge.signature(stamp.apply(judge.probes)), sigs), order) == answer)


def ask(models, library, context) -> list[dict]:
    """One question per trojan (job, trigger spec, model folder or None), as the track asks it (the same seed for
    the options, each tool's own order): does the judge pick the true trigger for the perfect tool, and for the
    random prior (`--draws` draws; only for built models, whose weights seed the draw)?"""
    judge, ds, prior, args = context
    baseline = RandomPrior()
    recs = []
    for m_index, (job, spec, folder) in enumerate(models):
        true = find(library, trigger_key(SimpleNamespace(trojan={"trigger": spec})))
        options, answer = draw_options(true, library, args.seed * 100_003 + m_index)
        question = (judge, [judge.signature(judge.apply_candidate(o)) for o in options], answer,
                    args.seed * 100_003 + m_index)
        perfect = TriggerStamp(make_trigger(spec, ds.image_shape), placement_seed=12_345)
        rec = {"job": job.id, "split": job.split, "built": folder is not None, "kind": job.trojan.trigger.kind,
               "insidious": bool(job.trojan.insidious), "k": len(options), "chance": chance(options),
               "perfect": picked(question, perfect, "perfect-tool")}
        if folder is not None:
            model, _ = load_model(folder)
            draws = [picked(question, baseline.synthesize(model, job.trojan.poison.target, DetectContext(
                         ds.x_test[:N_CONTEXT], ds.y_test[:N_CONTEXT], ds.num_classes, seed=args.seed + d, prior=prior)),
                            "random-prior") for d in range(args.draws)]
            rec |= {"random_prior": draws[0], "random_prior_expected": round(sum(draws) / len(draws), 4)}
        recs.append(rec)
        print(f"{rec['kind']:8s} {job.split:5s} k={rec['k']} perfect={rec['perfect']:.0f} "
              f"prior={rec.get('random_prior')} (expected {rec.get('random_prior_expected')})", flush=True)
    return recs


def summary(recs: list[dict]) -> dict:
    return {"perfect_tool_accuracy": _by_kind(recs, "perfect"),
            "random_prior_accuracy": _by_kind(recs, "random_prior"),
            "random_prior_expected_accuracy": _by_kind(recs, "random_prior_expected"),
            "chance": _by_kind(recs, "chance"), "options_per_question": dict(sorted(Counter(r["k"] for r in recs).items()))}


def library_report(library, probes) -> dict:
    """Which zoo triggers were merged into one option, and how close the closest genuinely different pair is."""
    renders = [render(c.trigger, probes) for c in library]
    closest = None
    for i in range(len(library)):
        for j in range(i):
            d = rendering_distance(renders[i], renders[j], probes)
            if closest is None or d < closest[0]:
                closest = (d, library[i].key, library[j].key)
    merged = [{"option": c.key, "same_look": sorted(c.aliases),
               "largest_distance": round(max(rendering_distance(render(make_trigger(json.loads(k), tuple(probes.shape[1:])),
                                                                        probes), renders[i], probes)
                                             for k in c.aliases), 6)}
              for i, c in enumerate(library) if c.aliases]
    kinds = defaultdict(int)
    for c in library:
        kinds[json.loads(c.key)["kind"]] += 1
    return {"options": len(library), "options_by_kind": dict(sorted(kinds.items())), "merged": merged,
            "closest_distinct_pair": None if closest is None else
            {"distance": round(closest[0], 4), "a": closest[1], "b": closest[2]}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="digits-bench")
    ap.add_argument("--zoo", default=None, help="a built zoo folder (default: build --config under the cache)")
    ap.add_argument("--split", default="test", help="test (held out), train, or all")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--draws", type=int, default=20, help="random-prior draws per trojan for its expected accuracy")
    ap.add_argument("--planned", action="store_true",
                    help="also ask about the trojans of the zoo's plan that were never built (rejected by the gate): the "
                         "judge needs only their trigger; the random prior, which reads a model, skips them")
    ap.add_argument("--out", default=str(HERE / "results" / "judge_ceiling.json"))
    args = ap.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    start, started = time.perf_counter(), time.time()
    zoo_dir = args.zoo
    if zoo_dir is None:
        zoo_dir = cache_folder(load_zoo_config(args.config))  # the benchmark's cache (config + trainer version)
        build_zoo(load_zoo_config(args.config), zoo_dir)  # resumable: finished models are kept
    seconds_zoo = time.perf_counter() - start
    zoo = Zoo(zoo_dir)
    zoo.plan()
    cfg = zoo.config()
    ds = zoo.dataset()
    everything = zoo.models()
    split = None if args.split == "all" else args.split
    x_eval = ds.x_test[N_CONTEXT:]
    probes = x_eval[:N_PROBES]
    reference = next(f for j, f, c in everything if j.split == "train" and not c.trojaned)
    judge = Judge(probes, load_model(reference)[0])
    library = judge.library([c for _, _, c in everything])  # as the track builds it: the zoo's built models
    prior = trigger_prior(cfg)
    context = (judge, ds, prior, args)

    def built(which):
        return [(job, card.trojan["trigger"], folder) for job, folder, card in zoo.trojaned(which)]

    recs = ask(built(split), library, context)
    result = {
        "command": "python benchmarks/judge_ceiling.py " + " ".join(
            f"--{k}" if v is True else f"--{k} {v}" for k, v in vars(args).items() if v is not None and v is not False
            and k != "out"),
        "zoo": str(zoo_dir), "zoo_config": cfg.name, "split": args.split, "trojans": len(recs),
        **summary(recs),
        "library": library_report(library, probes),
        "questions": recs,
    }
    if split is not None:  # every kind of the zoo, whichever split its trojans fell in (nothing here is fitted)
        result["all_splits"] = {"trojans": len(everyone := ask(built(None), library, context)), **summary(everyone)}
    if args.planned:
        done = {j.id for j, _, _ in zoo.models()}
        planned = [(job, job.trojan.trigger.model_dump(), None) for job in zoo.plan()
                   if job.trojaned and job.trojan.poison.target is not None and job.id not in done]
        wider = judge.library([c for _, _, c in everything] + [SimpleNamespace(trojan={"trigger": t}) for _, t, _ in planned])
        asked = ask(built(None) + planned, wider, context)
        result["planned"] = {"trojans": len(asked), "not_built": len(planned),
                             "perfect_tool_accuracy": _by_kind(asked, "perfect"), "chance": _by_kind(asked, "chance"),
                             "library": library_report(wider, probes)}
    result |= {"seconds_zoo": round(seconds_zoo, 1), "seconds_total": round(time.perf_counter() - start, 1)}
    write_benchmark(Path(args.out), result, config={k: v for k, v in vars(args).items() if k != "out"},
                    seed=args.seed, started=started)
    for section, fields in (("", result), ("all splits: ", result.get("all_splits", {})),
                            ("planned: ", result.get("planned", {}))):
        for field in ("perfect_tool_accuracy", "random_prior_accuracy", "random_prior_expected_accuracy", "chance"):
            if field in fields:
                print(section + field, {k: v["value"] for k, v in fields[field].items()})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    from trojanbench.errors import script_main
    script_main(main)
