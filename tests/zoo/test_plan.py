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
    with pytest.raises(UserError, match="unknown trigger"):
        expand(ZooConfig(trojans={"kinds": ["laser"]}))


@pytest.mark.parametrize("name", ["digits-bench", "digits-zoo", "digits-dev", "digits-eval2", "cifar10-zoo"])
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
