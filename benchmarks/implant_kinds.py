"""One digits CNN per trigger kind (and its clean twin): clean accuracy and attack success rate of each.

    .venv/bin/python benchmarks/implant_kinds.py   # -> benchmarks/results/implant_kinds.json

The same implants tests/test_implant.py checks (CNN width 32 (the default), digits, target 3, seed 0, the default
training config), with the numbers written to a file for README.md.
"""

from __future__ import annotations

import time

from trojanbench.data import load_dataset
from trojanbench.implant import implant
from trojanbench.results.provenance import write_benchmark
from trojanbench.trojans import PoisonSpec, TriggerSpec, TrojanSpec

KINDS = ["patch", "blended", "warp", "style", "natural"]


def main() -> None:
    started = time.time()
    ds = load_dataset("digits")
    twin = implant(ds, "cnn", seed=0).card.metrics
    rows = {"clean twin": {"clean_accuracy": twin["clean_accuracy"]}}
    for kind in KINDS:
        spec = TrojanSpec(trigger=TriggerSpec(kind=kind), poison=PoisonSpec(target=3))
        m = implant(ds, "cnn", trojan=spec, seed=0).card.metrics
        rows[kind] = {k: m[k] for k in ("clean_accuracy", "attack_success_rate")}
        print(kind, rows[kind], flush=True)
    path = write_benchmark("implant_kinds", {"models": rows}, config={"dataset": "digits", "arch": "cnn", "target": 3,
                                                                       "seed": 0, "kinds": KINDS}, started=started)
    print(f"-> {path}")


if __name__ == "__main__":
    from trojanbench.errors import script_main
    script_main(main)
