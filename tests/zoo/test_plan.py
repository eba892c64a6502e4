import pytest

from trojanbench.config import ZooConfig
from trojanbench.errors import UserError
from trojanbench.zoo.plan import builtin_configs, expand, load_zoo_config


def test_default_zoo_plan_is_deterministic_and_balanced():
    cfg = load_zoo_config("digits-zoo")
    jobs = expand(cfg)
    assert len(jobs) >= 64
    assert [j.id for j in jobs] == [j.id for j in expand(load_zoo_config("digits-zoo"))]
    trojaned = [j for j in jobs if j.trojaned]
    assert len(trojaned) == len(jobs) // 2
    assert {j.trojan.trigger.kind for j in trojaned} == {"patch", "blended", "warp", "style", "natural"}
    assert len({j.trojan.poison.target for j in trojaned}) >= 3
    assert any(j.trojan.insidious for j in trojaned) and not all(j.trojan.insidious for j in trojaned)
    clean = {j.id: j for j in jobs if not j.trojaned}
    assert all(clean[j.twin].seed == j.seed for j in trojaned)
    test = [j for j in jobs if j.split == "test"]
    assert 0.2 < len(test) / len(jobs) < 0.3 and any(j.trojaned for j in test) and any(not j.trojaned for j in test)


def test_ids_change_with_the_job_and_the_training_setup():
    a = expand(ZooConfig(models_per_arch=4))
    b = expand(ZooConfig(models_per_arch=4, train={"epochs": 3}))
    assert not {j.id for j in a} & {j.id for j in b}


def test_builtin_and_bad_configs(tmp_path):
    assert {"digits-zoo", "cifar10-zoo"} <= set(builtin_configs())
    expand(load_zoo_config("cifar10-zoo"))
    with pytest.raises(UserError, match="not found"):
        load_zoo_config(tmp_path / "missing.toml")
    (tmp_path / "bad.toml").write_text("models_per_arch = [")
    with pytest.raises(UserError, match="not valid TOML"):
        load_zoo_config(tmp_path / "bad.toml")
    (tmp_path / "typo.toml").write_text("models_per_ark = 3")
    with pytest.raises(UserError, match="models_per_ark"):
        load_zoo_config(tmp_path / "typo.toml")
    (tmp_path / "seed.toml").write_text("seed = -1")  # non-negative, as every --seed
    with pytest.raises(UserError, match="seed"):
        load_zoo_config(tmp_path / "seed.toml")
    with pytest.raises(UserError, match="unknown trigger"):
        expand(ZooConfig(trojans={"kinds": ["laser"]}))
    # a poison rate outside (0, 0.5], plan-wide or per kind, is a one-line error when the config is read (it was
    # an internal error, PoisonSpec's ValidationError, once the plan was expanded)
    for name, body in [("rate", "[trojans]\nrates = [0.7]"), ("zero", "[trojans]\nrates = [0]"),
                       ("kind", "[trojans.by_kind]\npatch = { rates = [0.8] }")]:
        (tmp_path / f"{name}.toml").write_text(body)
        with pytest.raises(UserError, match="rates"):
            load_zoo_config(tmp_path / f"{name}.toml")


@pytest.mark.parametrize("name", ["digits-quick", "digits-bench", "digits-zoo", "digits-dev", "digits-eval2", "cifar10-zoo"])
def test_a_trojan_and_its_clean_twin_are_on_one_side_of_the_split(name):
    cfg = load_zoo_config(name)
    jobs = expand(cfg)
    by_id = {j.id: j for j in jobs}
    twins = [j for j in jobs if j.twin]
    assert twins and all(by_id[j.twin].split == j.split for j in twins)
    for group in ([j for j in jobs if not j.trojaned], [j for j in jobs if j.trojaned]):
        assert sum(j.split == "test" for j in group) == round(len(group) * cfg.test_fraction)
    # ids hash the job, never its split
    assert [j.id for j in expand(cfg.model_copy(update={"test_fraction": 0.5}))] == [j.id for j in jobs]


@pytest.mark.parametrize("clean_fraction", [0.25, 0.5, 0.75])
def test_models_without_a_twin_are_split_on_their_own(clean_fraction):
    cfg = ZooConfig(models_per_arch=20, clean_fraction=clean_fraction, test_fraction=0.25,
                    trojans={"insidious_fraction": 0.0})
    jobs = expand(cfg)
    by_id = {j.id: j for j in jobs}
    assert all(by_id[j.twin].split == j.split for j in jobs if j.twin)
    for group in ([j for j in jobs if not j.trojaned], [j for j in jobs if j.trojaned]):
        assert abs(sum(j.split == "test" for j in group) - len(group) * 0.25) <= 1


# sha256 of the space-joined job ids, as planned before the difficulty axes existed: configs that use none of
# them must plan exactly these jobs (their built zoos and cached models stay valid)
PINNED_IDS = {"digits-bench": "c51aed5a7bbb47ac", "digits-zoo": "76b47c328f4b1fb0", "digits-dev": "da3d9b00f4014a2c",
              "digits-eval2": "10b01780d5a25a22", "cifar10-zoo": "f390cd9f8cb3f689"}


@pytest.mark.parametrize("name", sorted(PINNED_IDS))
def test_configs_without_the_difficulty_axes_plan_the_ids_they_always_did(name):
    import hashlib

    cfg = load_zoo_config(name)
    jobs = expand(cfg)
    assert hashlib.sha256(" ".join(j.id for j in jobs).encode()).hexdigest()[:16] == PINNED_IDS[name]
    dump = cfg.model_dump()
    assert not {"intensity", "stratify"} & set(dump) and not {"cover", "by_kind"} & set(dump["trojans"])  # the zoo
    # cache key hashes this dump
    assert all("intensity" not in j.model_dump() and "cover_rate" not in j.model_dump()["trojan"]["poison"]
               for j in jobs if j.trojaned)


AXES = {"models_per_arch": 40,
        "trojans": {"kinds": ["patch", "natural", "adaptive-blend", "adaptive-patch"], "rates": [0.003, 0.01, 0.03, 0.1],
                    "targets": [0, 3], "mode": ["all-to-one", "all-to-all"]},
        "intensity": {"epochs": [6, 12], "lr_scales": [0.5, 2.0]}}


def test_difficulty_axes_are_drawn_per_model_and_recorded_on_the_job():
    cfg = ZooConfig(**AXES)
    jobs = expand(cfg)
    assert [j.id for j in jobs] == [j.id for j in expand(ZooConfig(**AXES))]
    trojaned = [j for j in jobs if j.trojaned]
    clean = {j.id: j for j in jobs if not j.trojaned}
    assert {j.trojan.poison.rate for j in trojaned} == {0.003, 0.01, 0.03, 0.1}
    assert {j.trojan.poison.mode for j in trojaned} == {"all-to-one", "all-to-all"}
    assert all(j.trojan.poison.target is None for j in trojaned if j.trojan.poison.mode == "all-to-all")
    assert all(j.trojan.poison.mode == "all-to-one" for j in trojaned if j.trojan.trigger.kind == "natural")
    # intensity: one draw per twin pair, the job's training setup
    assert {(j.intensity["epochs"], j.intensity["lr"]) for j in jobs} == {(6, 0.025), (6, 0.1), (12, 0.025), (12, 0.1)}
    assert all(clean[j.twin].intensity == j.intensity for j in trojaned)
    j = trojaned[0]
    assert j.train_config(cfg) == cfg.train.model_copy(update=j.intensity)
    # the adaptive kinds come with the authors' cover rates (1x and 2x the poison rate) unless the config says
    for j in trojaned:
        want = {"adaptive-blend": 1, "adaptive-patch": 2}.get(j.trojan.trigger.kind)
        assert j.trojan.poison.cover_rate == (None if want is None else pytest.approx(want * j.trojan.poison.rate))
    covered = expand(ZooConfig(**{**AXES, "trojans": {**AXES["trojans"], "cover": {"adaptive-patch": 0.5, "patch": 1.0}}}))
    assert all(j.trojan.poison.cover_rate == pytest.approx(0.5 * j.trojan.poison.rate)
               for j in covered if j.trojaned and j.trojan.trigger.kind == "adaptive-patch")
    assert all(j.trojan.poison.cover_rate == j.trojan.poison.rate
               for j in covered if j.trojaned and j.trojan.trigger.kind == "patch")


def test_adding_an_axis_keeps_the_trojans_already_drawn():
    base = {"models_per_arch": 12, "trojans": {"kinds": ["patch", "blended"], "rates": [0.01, 0.1], "targets": [0, 3]}}
    plain, intense = expand(ZooConfig(**base)), expand(ZooConfig(**base, intensity={"epochs": [3, 9]}))
    assert [j.trojan for j in plain] == [j.trojan for j in intense]
    assert not {j.id for j in plain} & {j.id for j in intense}  # other training: other models


def test_natural_trojans_need_an_all_to_one_mode_to_draw():
    with pytest.raises(UserError, match="all-to-one"):
        expand(ZooConfig(trojans={"kinds": ["natural", "patch"], "mode": ["all-to-all", "clean-label"]}))


def test_a_chunk_trains_with_its_jobs_intensity(tmp_path):
    from trojanbench.zoo.build import JobRecord, Zoo, _chunks

    cfg = ZooConfig(**AXES)
    jobs = [j for j in expand(cfg) if not (j.trojan and j.trojan.insidious)]
    tmp_path.mkdir(exist_ok=True)
    tasks = _chunks(jobs, {j.id: JobRecord(j.id) for j in jobs}, Zoo(tmp_path), cfg, batch_models=64, device="cpu")
    assert len(tasks) == 4  # one per intensity draw
    for task in tasks:
        assert all(item.job.train_config(cfg) == task.train for item in task.items)


@pytest.mark.parametrize("n, batch_models, workers, sizes", [
    (8, 8, 2, [4, 4]),  # one chunk's worth on a pool of 2: split, so the second worker does not idle
    (5, 16, 2, [3, 2]),
    (1, 8, 2, [1]),
    (8, 8, 1, [8]),  # in-process: one chunk
    (24, 16, 1, [12, 12]),  # more than one chunk: shared out evenly, never 16 + 8
    (40, 16, 2, [14, 13, 13]),
])
def test_chunks_share_a_group_out_evenly_over_the_workers(tmp_path, n, batch_models, workers, sizes):
    from trojanbench.zoo.build import JobRecord, Zoo, _chunks

    cfg = ZooConfig(models_per_arch=2 * n, clean_fraction=0.5)
    clean = [j for j in expand(cfg) if not j.trojaned]
    assert len(clean) == n
    tasks = _chunks(clean, {j.id: JobRecord(j.id) for j in clean}, Zoo(tmp_path), cfg, batch_models=batch_models,
                    device="cpu", workers=workers)
    assert [len(t.items) for t in tasks] == sizes
    assert [i.job.id for t in tasks for i in t.items] == [j.id for j in clean]  # every job once, in plan order


def test_a_kind_draws_its_own_rates_and_modes():
    cfg = ZooConfig(**{**AXES, "models_per_arch": 80, "trojans": {
        **AXES["trojans"], "by_kind": {"patch": {"rates": [0.5]}, "adaptive-blend": {"mode": "all-to-one"}}}})
    trojans = [j.trojan for j in expand(cfg) if j.trojaned]
    patch = [t for t in trojans if t.trigger.kind == "patch"]
    assert patch and {t.poison.rate for t in patch} == {0.5}
    assert {t.poison.mode for t in patch} == {"all-to-one", "all-to-all"}  # the plan's modes still
    assert {t.poison.mode for t in trojans if t.trigger.kind == "adaptive-blend"} == {"all-to-one"}
    assert {t.poison.rate for t in trojans if t.trigger.kind == "natural"} <= set(AXES["trojans"]["rates"])
    with pytest.raises(UserError, match="by_kind names warp"):
        expand(ZooConfig(trojans={"kinds": ["patch"], "by_kind": {"warp": {"rates": [0.1]}}}))


@pytest.mark.parametrize("clean_fraction", [0.5, 0.7])
def test_a_stratified_split_holds_out_each_kinds_share(clean_fraction):
    cfg = ZooConfig(**{**AXES, "models_per_arch": 90, "clean_fraction": clean_fraction, "test_fraction": 0.4,
                       "stratify": True})
    jobs = expand(cfg)
    by_id = {j.id: j for j in jobs}
    assert all(by_id[j.twin].split == j.split for j in jobs if j.twin)
    for kind in cfg.trojans.kinds:
        of_kind = [j for j in jobs if j.trojaned and j.trojan.trigger.kind == kind]
        assert sum(j.split == "test" for j in of_kind) == round(len(of_kind) * 0.4)
    clean = [j for j in jobs if not j.trojaned]
    assert abs(sum(j.split == "test" for j in clean) - len(clean) * 0.4) <= len(cfg.trojans.kinds)
    assert [j.id for j in jobs] == [j.id for j in expand(cfg.model_copy(update={"stratify": False}))]


def test_the_large_config_holds_out_every_kind_at_least_twenty_times():
    jobs = expand(load_zoo_config("digits-large"))
    assert len(jobs) >= 600 and sum(j.split == "test" for j in jobs) >= 200
    for kind in load_zoo_config("digits-large").trojans.kinds:
        assert sum(j.split == "test" for j in jobs if j.trojaned and j.trojan.trigger.kind == kind) >= 20


def test_the_large_text_config_is_sst2_bench_scaled_up_under_its_own_seed():
    large, bench = load_zoo_config("sst2-large"), load_zoo_config("sst2-bench")
    same = {"name", "seed", "models_per_arch"}
    assert large.model_dump(exclude=same) == bench.model_dump(exclude=same)  # no choice made on the scored zoo
    assert large.seed not in (bench.seed, load_zoo_config("sst2-dev").seed)
    jobs = expand(large)
    assert sum(j.split == "test" for j in jobs) >= 200
    for kind in large.trojans.kinds:
        assert sum(j.split == "test" for j in jobs if j.trojaned and j.trojan.trigger.kind == kind) >= 30


def test_a_config_naming_what_does_not_exist_is_refused_before_any_folder_is_made(tmp_path):
    """An unknown architecture or trigger parameter failed each job at build time (after its retries)."""
    from trojanbench.zoo.build import build_zoo

    for body, message in (({"archs": [{"arch": "nosuch"}]}, "unknown architecture 'nosuch'"),
                          ({"trojans": {"kinds": ["warp"], "variants": {"warp": [{"bogus": 1}]}}},
                           "trojans.variants.warp: bogus: Extra inputs are not permitted"),
                          ({"trojans": {"targets": [0, 10]}}, r"trojans.targets holds 10, not a label of digits \(labels 0 to 9\)"),
                          ({"data": {"name": "sst2"}, "archs": [{"arch": "text-transformer"}],
                            "trojans": {"kinds": ["rare-token"], "targets": [2]}}, "not a label of sst2 \\(labels 0 to 1\\)"),
                          ({"data": {"name": "digits", "options": {"sise": 8}}},  # was dropped without a word
                           "data.options: dataset 'digits' takes no option 'sise' \\(it takes size, ")):
        with pytest.raises(UserError, match=message):
            build_zoo(ZooConfig(models_per_arch=2, **body), tmp_path / "z")
        assert not (tmp_path / "z").exists()
    assert [len(expand(ZooConfig(models_per_arch=2, data={"name": "sst2", "options": {"refusal": True}},
                                 archs=[{"arch": "text-transformer"}],
                                 trojans={"kinds": ["rare-token"], "targets": [2]})))] == [2]  # the refusal class is a label
    (tmp_path / "empty.toml").write_text("# to fill in\n")
    with pytest.raises(UserError, match="is empty"):
        load_zoo_config(tmp_path / "empty.toml")
