"""The audit report: `OUT/index.html` (one page, figures beside it, opens offline) and `OUT/audit.json` (the same
facts, machine-readable), written from an `audit.AuditResult`."""

from __future__ import annotations

import html
import json
import math

from ..results.stats import Estimate
from ..utils import atomic_write_text
from .html import STYLE

e = html.escape


def _est(x) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, dict):
        x = Estimate(**x)
    return e(str(x))


def _finite(o):
    """`o` as JSON-able data with null for every NaN or infinity (JSON has neither: `json.dumps` writes NaN)."""
    if hasattr(o, "tolist"):  # numpy / torch scalars and arrays
        o = o.tolist()
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, (str, int, bool, type(None))):
        return o
    return _finite(o.__dict__) if hasattr(o, "__dict__") else str(o)


def write_audit(res, out) -> None:
    from ..audit.calibrate import TROJAI_CE_BAR

    data = res.to_json()
    atomic_write_text(out / "audit.json", json.dumps(_finite(data), indent=2, allow_nan=False) + "\n")
    head = next(d for d in res.detectors if d.tool == res.headline)
    verdict_cls = "warn" if res.verdict == "trojaned" else "ok"
    parts = [f"<h1>Audit of {e(res.model.get('id') or res.model['file'])}</h1>",
             "<table class=facts>" + "".join(f"<tr><th>{e(k)}</th><td>{e(str(v))}</td></tr>" for k, v in [
                 ("model", res.model["file"]), ("format", res.model["format"]), ("architecture", res.model["arch"]),
                 ("data", res.data), ("reference zoo", f"{res.zoo_name} ({res.zoo})"), ("reference scores", res.reference),
                 ("left out of the reference", ", ".join(res.left_out) or "none (not a model of the zoo)"),
                 ("time", f"{res.seconds:.1f} s")]) + "</table>"]
    parts += [f"<p class=warn>{e(w)}</p>" for w in res.warnings]
    parts.append(
        f"<h2 id=verdict>Is it trojaned?</h2><p class='verdict {verdict_cls}' id=p-trojaned>P(trojaned) = "
        f"<b>{res.p_trojaned:.3f}</b>: <b>{e(res.verdict)}</b></p>"
        f"<p>From <b>{e(res.headline)}</b>, the detector with the lowest out-of-fold cross-entropy on the reference zoo's "
        f"held-out split ({_est(head.calibration['cross_entropy'])}; a constant 0.5 scores 0.693, the TrojAI bar was "
        f"{TROJAI_CE_BAR}). Each probability is the detector's score through a Platt curve fitted on the {head.reference_n} "
        "reference models; the calibration columns are out-of-fold (each reference model scored by a curve fitted "
        "without it and its twin), with 95% bootstrap intervals.</p>")
    rows = []
    for d in sorted(res.detectors, key=lambda d: (d.calibration["cross_entropy"].value, d.tool)):
        c = d.calibration
        rows.append(f"<tr class='{d.role}'><td>{e(d.tool)}</td><td>{e(d.role)}</td><td>{d.score:.4g}</td>"
                    f"<td><b>{d.probability:.3f}</b></td><td>{'' if d.target_label is None else d.target_label}</td>"
                    f"<td>{d.auroc:.3f}</td><td>{_est(c['cross_entropy'])}</td><td>{_est(c['brier'])}</td>"
                    f"<td>{_est(c['ece'])}</td><td>{_est(d.target_accuracy)}</td></tr>")
    parts.append("<table id=detectors><thead><tr><th>detector</th><th>role</th><th>raw score</th><th>P(trojaned)</th>"
                 "<th>target named</th><th>ref. AUROC</th><th>ref. cross-entropy</th><th>ref. Brier</th><th>ref. ECE</th>"
                 f"<th>ref. target acc</th></tr></thead><tbody>{''.join(rows)}</tbody></table>")
    parts.append("<h2 id=target>Toward which class?</h2>")
    if res.target is None:
        parts.append("<p>No detector named a target label.</p>")
    else:
        t = res.target
        parts.append(f"<p id=target-label>Predicted target label: <b>{t['label']}</b>, named by {e(t['tool'])}, whose target "
                     f"accuracy on the reference zoo's held-out trojans is {_est(t['accuracy'])} (Wilson 95%). "
                     f"Detectors naming the same label: {e(', '.join(t['agreeing']))}. All named labels: "
                     f"{e(', '.join(f'{k}: {v}' for k, v in t['named'].items()))}.</p>")
    parts.append("<h2 id=trigger>With what trigger?</h2>")
    if res.reconstructions:
        parts.append("<p>Triggers reconstructed for the predicted label, best first; transfer ASR is the fraction of clean "
                     "images of other classes that the reconstruction sends to the label.</p>")
        for r in res.reconstructions:
            parts.append(f"<figure><img src='{e(r.image)}' alt='{e(r.tool)}'><figcaption>{e(r.tool)}: transfer ASR "
                         f"{r.transfer_asr:.0%}</figcaption></figure>")
        if res.attribution_figure:
            parts.append(f"<figure><img src='{e(res.attribution_figure)}' alt='attribution maps'><figcaption>attribution "
                         "maps toward the predicted label on the best reconstruction</figcaption></figure>")
    else:
        parts.append("<p>No reconstruction (no target label named).</p>")
    parts.append("<h2 id=repairs>What would fixing it cost?</h2>")
    if res.repairs:
        body = "".join(f"<tr class='{r['role']}'><td>{e(r['tool'])}</td><td>{e(r['role'])}</td><td>{_est(r['asr'])}</td>"
                       f"<td>{_est(r['clean_cost'])}</td><td>{e(str(r['verdict']))}</td></tr>" for r in res.repairs)
        parts.append(f"<p>{e(res.repairs_note)}; lowest ASR after repair first.</p><table id=repair-table><thead><tr>"
                     "<th>repair</th><th>role</th><th>ASR after</th><th>clean-accuracy cost</th><th>verdict</th></tr>"
                     f"</thead><tbody>{body}</tbody></table>")
    else:
        parts.append(f"<p id=no-repairs>{e(res.repairs_note)}</p>")
    page = (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>trojanbench audit</title>"
            f"<style>{STYLE}.ok{{color:#060;font-weight:600}}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")
    atomic_write_text(out / "index.html", page)
