"""Tasks pair a tool family with ground truth and return metrics; the runner, not the tool, writes them.

Each track writes one row per (tool, model, per-model metric) into its run with `results.boards.model_row`, and
its board spec once; the boards (intervals, verdicts) are computed from those rows by `results.boards`.
"""

from __future__ import annotations

from ..errors import UserError


def groups_of(job) -> list[str]:
    """The groups a model is reported in besides "all": its trigger kind and crude vs insidious (none if clean)."""
    if not job.trojaned:
        return []
    return [f"kind={job.trojan.trigger.kind}", "insidious" if job.trojan.insidious else "crude"]


def role_of(tool_cls) -> str:
    return "baseline" if getattr(tool_cls, "is_baseline", False) else "tool"


def population(zoo, split: str | None, models, what: str = "models") -> str:
    """What a board's numbers are conditional on: the zoo, the split, how many clean and trojaned models, and
    the quality gate every trojan passed."""
    n_trojaned = sum(1 for j, _, _ in models if j.trojaned)
    n_clean = len(models) - n_trojaned
    cfg = zoo.config()
    rejected = len(zoo.status().get("rejected", []))
    where = {"test": "held-out split", "train": "training split", None: "both splits"}[split]
    counts = f"{n_trojaned} trojaned" if n_clean == 0 else f"{n_clean} clean + {n_trojaned} trojaned"
    return (f"zoo {cfg.name}, {where}: {counts} {what}. Trojans are kept only if their ASR >= {cfg.gate.min_asr:g} and "
            f"clean accuracy >= their clean twin's - {cfg.gate.max_clean_drop:g} ({rejected} job(s) rejected by this gate).")


def zoo_modality(zoo) -> str:
    """The inputs a zoo's models take, "image" or "text": that of its trigger kinds (a zoo has one)."""
    return config_modality(zoo.config())


def config_modality(cfg) -> str:
    """The inputs the models of a zoo config take (before it is built): that of its trigger kinds."""
    from ..trojans import TRIGGERS

    kinds = cfg.trojans.kinds
    return TRIGGERS.get(kinds[0]).modality if kinds else "image"


def applicable(registry, tools: list[str] | None, modality: str) -> list[str]:
    """The names of `registry` to run on a zoo of `modality`: every registered tool that supports it (`tools` None),
    or those of `tools` it knows. A tool named in `tools` that does not support the modality is a one-line error."""
    names = [n for n in registry.names() if tools is None or n in tools]
    for n in names:
        supported = registry.get(n).modalities
        if tools is not None and modality not in supported:
            raise UserError(f"{n} works on {' and '.join(supported)} models; this zoo's models take {modality}")
    return [n for n in names if modality in registry.get(n).modalities]
