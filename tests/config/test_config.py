import pytest

from fassl.config import load_config
from fassl.errors import ConfigError
from fassl.recipes import RECIPES


def test_defaults_and_overrides():
    cfg = load_config(None, ["optim.lr=0.3", "model.width=32", "probe.settings=[standard]"])
    assert cfg.optim.lr == 0.3 and cfg.model.width == 32
    assert cfg.probe.settings == ["standard"]
    assert cfg.rebalance.ema == 0.99 and cfg.prototypes.num_prototypes == 128


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"optim\.lrr"):
        load_config(None, ["optim.lrr=0.3"])


def test_mistyped_value_is_named():
    with pytest.raises(ConfigError, match=r"model\.width"):
        load_config(None, ["model.width=wide"])


def test_bad_choice_is_named():
    with pytest.raises(ConfigError, match=r"rebalance\.weight"):
        load_config(None, ["rebalance.weight=magic"])


def test_unknown_key_in_file_names_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("optim:\n  lr: 0.1\n  nesterov: true\n")
    with pytest.raises(ConfigError, match=r"optim.nesterov.*bad.yaml"):
        load_config(f)


def test_override_without_equals():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["optim.lr"])


def test_missing_file():
    with pytest.raises(ConfigError, match=r"not found"):
        load_config("nope.yaml")


@pytest.mark.parametrize("recipe", sorted(p.name for p in RECIPES.glob("*.yaml")))
def test_every_recipe_loads(recipe):
    load_config(RECIPES / recipe)


def test_each_knn_k_has_one_name_and_old_keys_still_load(tmp_path):
    # rebalance.knn_k is now rebalance.weight_k; train.knn_k is gone (the monitor's k is
    # probe.knn_k): a run folder's config.yaml and overrides from before keep loading
    old = tmp_path / "config.yaml"
    old.write_text("train:\n  knn_k: 50\nrebalance:\n  knn_k: 7\n")
    cfg = load_config(old)
    assert cfg.rebalance.weight_k == 7 and cfg.probe.knn_k == 200
    assert not hasattr(cfg.train, "knn_k") and not hasattr(cfg.rebalance, "knn_k")
    assert load_config(None, ["rebalance.knn_k=3"]).rebalance.weight_k == 3
    # the new name wins over the old one in the same layer
    both = tmp_path / "both.yaml"
    both.write_text("rebalance:\n  knn_k: 7\n  weight_k: 9\n")
    assert load_config(both).rebalance.weight_k == 9
