"""`trojanbench audit`: one model in three layouts, calibrated verdicts from a reference zoo, the report, bad inputs."""

import io
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from trojanbench.audit import audit, member_of
from trojanbench.audit.calibrate import brier, calibration_metrics, cross_entropy, ece, fit_platt, out_of_fold
from trojanbench.errors import UserError
from trojanbench.zoo.build import Zoo
from trojanbench.zoo.store import load_model

CHEAP = ["weight-stats", "entropy", "final-layer-outlier"]


def cli(*args):
    return subprocess.run([sys.executable, "-m", "trojanbench.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600)


def one_line_error(r, *fragments):
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for f in fragments:
        assert f in lines[0], lines[0]


# -- calibration -----------------------------------------------------------------------------------------------
def test_platt_is_monotone_and_bounded_by_smoothed_targets():
    s = np.r_[np.zeros(8), np.ones(8)]
    y = np.r_[np.zeros(8), np.ones(8)].astype(int)
    p = fit_platt(s, y)([0.0, 0.5, 1.0])
    assert p[0] < p[1] < p[2]
    # perfectly separated: Platt's smoothed targets 1/(N-+2) and (N++1)/(N++2), never 0 or 1
    assert p[0] == pytest.approx(1 / 10, abs=1e-3) and p[2] == pytest.approx(9 / 10, abs=1e-3)


def test_out_of_fold_never_sees_its_own_unit():
    rng = np.random.default_rng(0)
    s = np.r_[rng.normal(0, 1, 10), rng.normal(2, 1, 10)]
    y = np.r_[np.zeros(10), np.ones(10)].astype(int)
    units = np.r_[np.arange(10), np.arange(10)]  # trojan i is clean model i's twin
    oof = out_of_fold(s, y, units)
    s2 = s.copy()
    s2[0], s2[10] = 50.0, -50.0  # a wild unit changes every other fit, but not its own probabilities' curve
    oof2 = out_of_fold(s2, y, units)
    other = fit_platt(np.delete(s, [0, 10]), np.delete(y, [0, 10]))
    assert oof2[0] == pytest.approx(float(other([50.0])[0]))
    assert not np.allclose(oof[1:10], oof2[1:10])


def test_calibration_metrics_known_values():
    y = np.array([0, 1, 0, 1])
    assert cross_entropy(np.full(4, 0.5), y) == pytest.approx(np.log(2))
    assert brier(np.full(4, 0.5), y) == pytest.approx(0.25)
    assert ece(np.array([0.25, 0.25, 0.25, 0.25]), np.array([1, 0, 0, 0])) == pytest.approx(0.0)
    assert ece(np.array([0.95, 0.95]), np.array([0, 0])) == pytest.approx(0.95)
    m = calibration_metrics(np.r_[np.full(6, 0.2), np.full(6, 0.8)], np.r_[np.zeros(6), np.ones(6)].astype(int), n_boot=200)
    assert m["brier"].value == pytest.approx(0.04) and m["brier"].n == 6 and m["brier"].has_interval


# -- audits of one zoo model in three layouts -------------------------------------------------------------------
@pytest.fixture(scope="module")
def pair(tiny_zoo):
    zoo = Zoo(tiny_zoo)
    test = zoo.models(split="test")
    trojan = next((j, f, c) for j, f, c in test if j.trojaned)
    twin = next((j, f, c) for j, f, c in test if j.id == trojan[0].twin)
    return trojan, twin


@pytest.fixture(scope="module")
def audits(tiny_zoo, pair, tmp_path_factory):
    """The held-out trojan and its twin in our store format, and the trojan as a bare state dict with an import-path
    architecture and as a BackdoorBench attack result."""
    (job, folder, card), (_, twin_folder, _) = pair
    base = tmp_path_factory.mktemp("audit")
    model, _ = load_model(folder)
    sd = base / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, sd)
    bb = base / "attack_result.pt"
    torch.save({"model_name": "cnn", "num_classes": 10, "img_size": [16, 16, 1], "clean_data": "digits",
                "data_path": "./data", "model": model.state_dict(), "bd_test": {"x": torch.zeros(2, 1, 16, 16),
                                                                                "y": torch.zeros(2, dtype=torch.long)}}, bb)
    kw = dict(detectors=CHEAP, synthesizers=[], attributors=[], zoo=tiny_zoo, n_boot=200)
    arch_params = {k: v for k, v in card.arch_kwargs.items()}
    return {
        "store": audit(folder, "digits", base / "store", **{**kw, "synthesizers": ["trigger-inversion"],
                                                             "attributors": ["saliency"]}),
        "twin": audit(twin_folder, "digits", base / "twin", **kw),
        "state-dict": audit(sd, "digits", base / "sd", arch="trojanbench.models.cnn:cnn", arch_params=arch_params, **kw),
        "backdoorbench": audit(bb, "digits", base / "bb", arch_params={"width": card.arch_kwargs["width"],
                                                                          "depth": card.arch_kwargs["depth"]}, **kw),
        "base": base, "card": card,
    }


def test_audit_leaves_out_the_audited_unit_and_is_format_independent(audits, pair, tiny_zoo):
    res = audits["store"]
    (job, _, card), (_, _, twin_card) = pair
    assert set(res.left_out) == {card.id, twin_card.id}  # the model and its clean twin
    assert set(audits["twin"].left_out) == {card.id, twin_card.id}
    n_test = len(Zoo(tiny_zoo).models(split="test"))
    for d in res.detectors:
        assert d.reference_n == n_test - 2 and 0 < d.probability < 1
    assert res.headline in CHEAP and res.verdict == ("trojaned" if res.p_trojaned >= 0.5 else "clean")
    # the same weights in another layout: recognised as the zoo model by their hash, same scores, same verdict
    for fmt in ("state-dict", "backdoorbench"):
        other = audits[fmt]
        assert other.left_out == res.left_out
        assert [(d.tool, round(d.score, 6), round(d.probability, 6)) for d in other.detectors] == \
               [(d.tool, round(d.score, 6), round(d.probability, 6)) for d in res.detectors]
    assert audits["backdoorbench"].model["model_name"] == "cnn" and audits["backdoorbench"].model["format"] == "backdoorbench"


def test_audit_names_a_target_and_reconstructs_a_trigger_for_it(audits, pair):
    res = audits["store"]
    assert res.target is not None and res.target["tool"] == "final-layer-outlier"
    assert 0 <= res.target["label"] < 10
    assert [r.tool for r in res.reconstructions] == ["trigger-inversion"]
    assert (audits["base"] / "store" / res.reconstructions[0].image).is_file()
    assert (audits["base"] / "store" / res.attribution_figure).is_file()
    def no_nan(token):
        raise AssertionError(f"audit.json holds {token}, which is not JSON")

    data = json.loads((audits["base"] / "store" / "audit.json").read_text(), parse_constant=no_nan)
    assert data["p_trojaned"] == pytest.approx(res.p_trojaned) and data["verdict"] == res.verdict
    # an estimate without an interval (NaN bounds in Python: the tiny reference is too small for one) has null bounds
    bounds = [(d.calibration[k].low, e["low"]) for d, dj in zip(res.detectors, data["detectors"])
              for k, e in dj["calibration"].items()]
    assert any(np.isnan(low) for low, _ in bounds)
    assert all((saved is None) == bool(np.isnan(low)) for low, saved in bounds)
    assert "no repair track" in res.repairs_note  # the computed reference holds the detect track only


def test_a_model_unlike_the_zoos_is_warned_about_and_a_zoo_model_is_not(audits, pair, tiny_zoo, tmp_path):
    """An implanted CNN twice the zoo's width, trained longer, read P(trojaned) 0.009 from a curve fitted on other
    models, without a word. A model unlike every zoo model (architecture by its parameter shapes, however named;
    training per its card) is said to be, with how; a zoo model is not, in whatever layout it arrives."""
    from trojanbench.models import build_model
    from trojanbench.zoo.store import save_model

    for fmt in ("store", "twin", "state-dict", "backdoorbench"):
        assert not any("unlike" in w for w in audits[fmt].warnings), (fmt, audits[fmt].warnings)
    (_, folder, card), _ = pair
    kw = dict(detectors=CHEAP, synthesizers=[], attributors=[], zoo=tiny_zoo, n_boot=200,
              reference=audits["base"] / "store" / "reference.sqlite")
    wide = {**card.arch_kwargs, "width": 2 * card.arch_kwargs["width"]}
    sd = tmp_path / "wide.safetensors"
    save_file({k: v.contiguous() for k, v in build_model(card.arch, **wide).state_dict().items()}, sd)
    res = audit(sd, "digits", tmp_path / "wide", arch="cnn", arch_params={"width": wide["width"], "depth": wide["depth"]},
                **kw)
    (warning,) = [w for w in res.warnings if "unlike" in w]
    assert "architecture (cnn: parameter shapes) is none of the zoo's" in warning and "epochs" not in warning
    (_, twin_folder, twin_card) = pair[1]  # a zoo model's weights under a card that says it trained for 99 epochs
    model, _ = load_model(twin_folder)
    save_model(tmp_path / "longer", model, twin_card.model_copy(update={"id": "", "train": {**twin_card.train, "epochs": 99}}))
    res = audit(tmp_path / "longer", "digits", tmp_path / "longer-out", **kw)
    (warning,) = [w for w in res.warnings if "unlike" in w]
    assert f"epochs 99 (the zoo's: {card.train['epochs']})" in warning and "architecture" not in warning


def test_a_headline_outside_the_reference_or_no_better_than_chance_is_warned_about():
    """`audit --tools random` read "P(trojaned) = 0.506: trojaned" with nothing saying it was chance."""
    from trojanbench.audit import DetectorResult, headline_warnings
    from trojanbench.results import ResultRow
    from trojanbench.results.stats import Estimate

    rows = [ResultRow("random", f"m{i}", "detect-model", "score", v) for i, v in enumerate([0.1, 0.5, 0.9])]

    def head(score, ce):
        return DetectorResult("random", "baseline", score, 0.5, None, 3, 0.5, {"cross_entropy": Estimate(ce)}, None)

    assert headline_warnings(head(0.5, 0.4), rows, []) == []
    assert headline_warnings(head(0.5, float("nan")), rows, []) == []  # a reference too small to say
    (chance,) = headline_warnings(head(0.5, 0.75), rows, [])
    assert "no better than" not in chance and "constant 0.5" in chance and "says nothing" in chance
    (outside,) = headline_warnings(head(0.95, 0.4), rows, [])
    assert "outside the reference models' range [0.1, 0.9]" in outside
    assert headline_warnings(head(0.95, 0.4), rows, ["m2"])[0].endswith("range [0.1, 0.5]: the probability extrapolates the curve")


def test_audit_reference_is_reused_and_member_of_matches_by_weights(audits, tiny_zoo, pair):
    from trojanbench.results import ResultsStore

    with ResultsStore(audits["base"] / "store" / "reference.sqlite") as store:
        assert len(store.runs()) == 1 and store.runs()[0].kind == "audit-reference"
    (_, folder, card), _ = pair
    model, _ = load_model(folder)
    zoo = Zoo(tiny_zoo)
    assert member_of(zoo, model) == card.id
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)
    assert member_of(zoo, model) is None


def test_audit_report_renders_in_real_chromium(audits, tmp_path):
    from trojanbench.testing.browser import chromium, open_page

    exe = chromium()
    errors, images = open_page((audits["base"] / "store" / "index.html").as_uri(), exe, tmp_path / "shot.png")
    assert errors == []
    assert len(images) == 2 and all(width > 0 for _, width in images), images
    page = (audits["base"] / "store" / "index.html").read_text()
    assert "P(trojaned)" in page and "id=detectors" in page and "Toward which class?" in page


def test_audit_reads_a_folder_of_images_to_fit_the_model(tmp_path, pair, tiny_zoo, digits):
    """A folder of grayscale PNGs in mixed sizes is read as the model takes them (1x16x16: its card's shape), not as
    RGB at whatever size the files have."""
    from PIL import Image

    (_, folder, card), _ = pair
    for i, (x, y) in enumerate(zip(digits.x_test[:40], digits.y_test[:40])):
        im = Image.fromarray((x[0].numpy() * 255).astype(np.uint8), "L")
        (tmp_path / "data" / str(int(y))).mkdir(parents=True, exist_ok=True)
        (im if i % 2 else im.resize((24, 24))).save(tmp_path / "data" / str(int(y)) / f"{i}.png")
    for c in range(10):  # every class of the model, even those the 40 images miss
        (tmp_path / "data" / str(c)).mkdir(exist_ok=True)
        Image.fromarray(np.zeros((16, 16), np.uint8), "L").save(tmp_path / "data" / str(c) / "blank.png")
    res = audit(folder, str(tmp_path / "data"), tmp_path / "out", detectors=["entropy"], synthesizers=[],
                attributors=[], zoo=tiny_zoo, n_boot=50)
    assert res.data == "imagefolder" and 0 < res.p_trojaned < 1
    # the shape a model declares: its card's, BackdoorBench's img_size (H, W, C), --arch-param; else the zoo's is used
    from trojanbench.audit.load import declared_shape

    model, _ = load_model(folder)
    torch.save({"model_name": "cnn", "img_size": [16, 16, 1], "model": model.state_dict()}, tmp_path / "bb.pt")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "m.safetensors")
    assert declared_shape(folder) == declared_shape(tmp_path / "bb.pt") == (1, 16, 16)
    assert declared_shape(tmp_path / "m.safetensors") is None
    assert declared_shape(tmp_path / "m.safetensors", {"in_channels": 3, "image_size": [8, 12]}) == (3, 8, 12)
    res = audit(tmp_path / "m.safetensors", str(tmp_path / "data"), tmp_path / "out-sd", arch="cnn",
                arch_params={"width": 8, "depth": 2}, detectors=["entropy"], synthesizers=[], attributors=[],
                zoo=tiny_zoo, n_boot=50)
    assert res.model["arch_kwargs"]["in_channels"] == 1
    # a model that declares a shape no folder of images can be read as: the one-line error says what it expected
    from trojanbench.models.cnn import cnn

    kw = dict(in_channels=4, num_classes=10, image_size=16, mean=[0.0] * 4, std=[1.0] * 4, width=8, depth=2)
    sd = tmp_path / "m4.safetensors"
    save_file({k: v.contiguous() for k, v in cnn(**kw).state_dict().items()}, sd)
    with pytest.raises(UserError, match=r"images \(3, 16, 16\) \(C, H, W\), expected 4x16x16"):
        audit(sd, str(tmp_path / "data"), tmp_path / "out4", arch="trojanbench.models.cnn:cnn", arch_params=kw,
              detectors=["entropy"], zoo=tiny_zoo)


# -- bad inputs --------------------------------------------------------------------------------------------------
def test_backdoorbench_file_that_needs_a_full_unpickle_is_refused(tmp_path):
    from trojanbench.audit.load import read_backdoorbench

    path = tmp_path / "attack_result.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "bd_train": {"original_index": np.arange(3)}}, path)
    with pytest.raises(UserError, match="never unpickles"):
        read_backdoorbench(path)
    # a plain torch.save(model.state_dict()) is read safely but is no attack result: say how to audit it
    torch.save({"w": torch.zeros(2)}, path)
    with pytest.raises(UserError, match="bare torch.save state dict: re-save it with safetensors"):
        read_backdoorbench(path)
    torch.save({"weights": [1, 2]}, path)
    with pytest.raises(UserError, match="not a BackdoorBench attack result.*safetensors.torch.save_file"):
        read_backdoorbench(path)


def test_audit_cli_errors_are_one_line(tmp_path, pair, tiny_zoo):
    (_, folder, card), _ = pair
    one_line_error(cli("audit", tmp_path / "nope", "--data", "digits", "--zoo", tiny_zoo), "does not exist")
    model, _ = load_model(folder)
    sd = tmp_path / "m.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, sd)
    one_line_error(cli("audit", sd, "--data", "digits", "--zoo", tiny_zoo), "--arch")
    one_line_error(cli("audit", sd, "--data", "digits", "--zoo", tiny_zoo, "--arch", "nosuch.module:Net"), "cannot import")
    one_line_error(cli("audit", sd, "--data", "digits", "--zoo", tiny_zoo, "--arch", "mlp"), "does not fit architecture mlp")
    one_line_error(cli("audit", sd, "--data", "nosuchdata", "--zoo", tiny_zoo, "--arch", "cnn"), "nosuchdata")
    one_line_error(cli("audit", folder, "--data", "digits", "--zoo", tmp_path), "not a zoo")
    pickled = tmp_path / "evil.pt"
    buf = io.BytesIO()
    torch.save({"model": {"w": torch.zeros(1)}, "x": ValueError("a pickled object")}, buf)
    pickled.write_bytes(buf.getvalue())
    one_line_error(cli("audit", pickled, "--data", "digits", "--zoo", tiny_zoo, "--arch", "cnn"), "never unpickles")
    # an empty --tools, and synthesizer / attributor names checked before any work (they were only checked once a
    # detector named a target, after every detector had run, and ignored otherwise)
    one_line_error(cli("audit", folder, "--data", "digits", "--zoo", tiny_zoo, "--tools", ""), "--tools '' names nothing")
    for option in ("--synthesizers", "--attributors"):
        r = cli("audit", folder, "--data", "digits", "--zoo", tiny_zoo, "--tools", "entropy", option, "nosuch",
                "--out", tmp_path / "a")
        one_line_error(r, "unknown", "'nosuch'")
        assert not (tmp_path / "a").exists()


def test_audit_help_names_the_default_reference():
    from trojanbench.audit import DEFAULT_REFERENCE

    r = cli("audit", "--help")
    assert r.returncode == 0 and str(DEFAULT_REFERENCE) in r.stdout and "OUT/reference.sqlite" in r.stdout, r.stdout
