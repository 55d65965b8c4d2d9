"""lawa_benchmarks.resnet.config: every shipped config loads; every problem of a bad one is reported at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import require

require("yaml")

from lawa_benchmarks.resnet.config import ConfigError, config_to_dict, load_config, parse_config  # noqa: E402

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
RESNET_CONFIGS = sorted(p for p in CONFIGS.glob("*.yaml") if "lawa bench resnet" in p.read_text().splitlines()[0])


def test_the_four_resnet_configs_ship():
    names = {p.stem for p in RESNET_CONFIGS}
    assert {"quick", "repro", "resnet50_imagenet", "resnet34_cifar100"} <= names


@pytest.mark.parametrize("path", RESNET_CONFIGS, ids=lambda p: p.stem)
def test_every_shipped_config_loads_and_names_its_command(path):
    first = path.read_text().splitlines()[0]
    assert first.startswith("# ") and f"--config configs/{path.name}" in first
    cfg = load_config(path)
    assert cfg.train.epochs >= 1 and cfg.seeds >= 1
    # round trip: the resolved dict validates to the same config
    assert parse_config(config_to_dict(cfg)) == cfg


def test_paper_recipes_are_verbatim():
    imagenet = load_config(CONFIGS / "resnet50_imagenet.yaml")
    assert (imagenet.model.arch, imagenet.train.epochs, imagenet.train.momentum, imagenet.train.schedule) == (
        "resnet50", 90, 0.9, "cosine")
    assert 5 in imagenet.methods.lawa.k and imagenet.eval.bn == "recompute"
    cifar = load_config(CONFIGS / "resnet34_cifar100.yaml")
    assert (cifar.model.arch, cifar.train.epochs, cifar.data.batch_size, cifar.train.lr) == ("resnet34", 200, 256, 0.1)
    assert (cifar.methods.lookahead.alpha, cifar.methods.lookahead.k, cifar.methods.lookahead.enabled) == (0.8, 5, True)
    assert 10 in cifar.methods.lawa.k and (cifar.methods.exp.alpha, cifar.methods.exp.k) == (0.9, 10)


def test_repro_is_sized_as_promised():
    cfg = load_config(CONFIGS / "repro.yaml")
    assert cfg.seeds == 3 and cfg.train.epochs >= 20 and cfg.data.dataset == "fashion-mnist"


def test_overrides_apply_and_parse_as_yaml():
    cfg = load_config(CONFIGS / "quick.yaml", ["train.epochs=3", "methods.lawa.k=[2, 5]", "data.root=/x", "seeds=2"])
    assert cfg.train.epochs == 3 and cfg.methods.lawa.k == [2, 5] and cfg.data.root == "/x" and cfg.seeds == 2
    assert parse_config({"methods": {"lawa": {"k": 6}}}).methods.lawa.k == [6]  # a scalar is a one-item list


def test_every_problem_is_reported_at_once(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "seeds: 0\n"
        "data: {dataset: mnist, batch_sise: 64}\n"
        "model: {width: wide}\n"
        "train: {epochs: 5, momentum: 1.5}\n"
        "methods: {lawa: {k: [0, 6]}, swa: {start_epoch: 9}}\n"
        "colour: blue\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(bad, ["train.lr=-1", "nonsense"])
    errors = info.value.errors
    text = str(info.value)
    for expected in ("seeds: 0", "data.dataset: 'mnist'", "data.batch_sise: unknown key (did you mean 'batch_size'?)",
                     "model.width: 'wide' is not an int", "train.momentum: 1.5", "methods.lawa.k",
                     "methods.swa.start_epoch: 9", "colour: unknown key", "train.lr: -1.0",
                     "override 'nonsense': write it as key=value"):
        assert expected in text, expected
    assert len(errors) == 10, errors


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "b.yaml").write_text("train: {epochs: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "b.yaml")
    with pytest.raises(ConfigError, match="needs data.root"):
        parse_config({"data": {"dataset": "cifar10"}})
