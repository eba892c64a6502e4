"""The main job (`trojanbench run`): for now the foundation slice -- implant every trigger kind into one
architecture beside its clean twin, store models and results, and return the table. Models already in
the output folder with the same configuration are reused, so a killed run resumes."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

from rich.table import Table

from .config import default_train_config
from .data import load_dataset
from .errors import UserError
from .implant import implant
from .results import ResultRow, ResultsStore
from .trojans import TRIGGERS, PoisonSpec, TriggerSpec, TrojanSpec
from .utils import canonical_json, resolve_device, sha256_bytes
from .zoo.store import load_card, save_model


def run_foundation(out: Path, dataset: str = "digits", arch: str = "cnn", target: int = 3, seed: int = 0,
                   epochs: int | None = None, data_root: Path | None = None, device: str = "auto",
                   progress=None) -> Table:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder")
    ds_opts = {"data_root": str(data_root)} if data_root else {}
    ds = load_dataset(dataset, **ds_opts)
    cfg = default_train_config(arch, dataset)
    if epochs:
        cfg = cfg.model_copy(update={"epochs": epochs})
    jobs: list[tuple[str, TrojanSpec | None]] = [("clean", None)]
    for kind in TRIGGERS.names():
        params = {"filter": "sepia"} if (kind == "style" and ds.image_shape[0] == 3) else {}
        jobs.append((kind, TrojanSpec(trigger=TriggerSpec(kind=kind, params=params, seed=seed),
                                      poison=PoisonSpec(target=target))))
    cards = {}
    dev = resolve_device(device)
    with ResultsStore(out / "results.sqlite") as store, (progress() if progress else nullcontext()) as bar:
        task = bar.add_task("implanting", total=len(jobs)) if bar else None
        for name, trojan in jobs:
            spec = {"dataset": dataset, "opts": ds_opts, "arch": arch, "trojan": trojan.model_dump() if trojan else None,
                    "train": cfg.model_dump(), "seed": seed}
            config_hash = sha256_bytes(canonical_json(spec).encode())[:16]
            folder = out / "models" / name
            card = _reusable(folder, config_hash)
            if card is None:
                if bar:
                    bar.update(task, description=f"implanting {name}")
                result = implant(ds, arch, None, trojan, cfg, seed=seed, device=dev, dataset_options=ds_opts)
                result.card.extra["config_hash"] = config_hash
                card = save_model(folder, result.model, result.card, result.poisoned_indices)
            store.write([ResultRow("implant", card.id, "implant", k, v, seed=seed, config_hash=config_hash,
                                   extra={"name": name}) for k, v in card.metrics.items()])
            cards[name] = card
            if bar:
                bar.update(task, advance=1)
    clean_acc = cards["clean"].metrics["clean_accuracy"]
    table = Table(title=f"{arch} on {dataset}, target {target}, seed {seed}")
    for col in ("model", "clean acc", "vs clean twin", "attack success", "poisoned"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for name, card in cards.items():
        m = card.metrics
        asr = m.get("attack_success_rate")
        table.add_row(name, f"{m['clean_accuracy']:.2%}",
                      f"{100 * (m['clean_accuracy'] - clean_acc):+.1f} pt", "-" if asr is None else f"{asr:.2%}",
                      str(card.n_poisoned))
    return table


def _reusable(folder: Path, config_hash: str):
    try:
        card = load_card(folder)
    except UserError:
        return None
    return card if card.extra.get("config_hash") == config_hash else None
