"""lawa_benchmarks.resnet.config: every shipped config loads; every problem of a bad one is reported at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import require

require("yaml")
require("pydantic")

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
        "methods: {lawa: {k: [0, 6]}, swa: {swa_start: -1}, exp: {alpha: 1.5}, ema: {enabled: maybe}}\n"
        "colour: blue\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(bad, ["train.lr=-1", "nonsense"])
    errors = info.value.errors
    for expected in ("seeds: 0 is invalid", "data.dataset: 'mnist' is invalid",
                     "data.batch_sise: unknown key (did you mean 'batch_size'?)",
                     "model.width: 'wide' is invalid: input should be a valid integer", "train.momentum: 1.5",
                     "methods.lawa.k[0]: 0 is invalid", "methods.swa: Invalid swa_start: -1",
                     "methods.exp: Invalid alpha: 1.5",  # the method's own check, from the registry
                     "methods.ema.enabled: 'maybe' is invalid", "colour: unknown key", "train.lr: -1 is invalid",
                     "override 'nonsense': write it as key=value"):
        assert sum(expected in e for e in errors) == 1, (expected, errors)
    assert len(errors) == 12, errors
    assert str(info.value).startswith(f"12 problem(s) in {bad}:")


def test_overrides_apply_before_validation(tmp_path):
    """A file that is invalid alone validates once an override fixes it, and an override can break a good file."""
    path = tmp_path / "c.yaml"
    path.write_text("data: {dataset: cifar10}\ntrain: {epochs: 4, warmup_epochs: 6}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert [e.split(":")[0] for e in info.value.errors] == ["data.root", "train.warmup_epochs"]
    cfg = load_config(path, ["data.root=/data/cifar", "train.epochs=8"])  # warm-up 6 < 8 now
    assert (cfg.data.root, cfg.train.epochs, cfg.train.warmup_epochs) == ("/data/cifar", 8, 6)
    with pytest.raises(ConfigError, match=r"train.warmup_epochs: 6 is invalid"):
        load_config(path, ["data.root=/x", "train.epochs=6"])


def test_methods_sections_follow_the_registry():
    import lawa_optim

    cfg = parse_config({})
    assert cfg.methods.names() == [m for m in lawa_optim.list_methods() if m != "base"]
    for name in cfg.methods.names():
        info = lawa_optim.get_method_info(name)
        section = cfg.methods[name]
        assert section.enabled is (not info.changes_trajectory and info.requires is None), name
        for key, value in section.method_kwargs().items():  # every option is the method's, with its default
            assert info.accepted_kwargs()[key] == value, (name, key)
    assert cfg.methods.exp.alpha == lawa_optim.get_method_info("exp").defaults["alpha"]
    assert cfg.methods.lawa.k == [lawa_optim.get_method_info("lawa").defaults["k"]]
    with pytest.raises(ConfigError, match="methods.lawa.period: unknown key"):  # the runner sets it: one per epoch
        parse_config({"methods": {"lawa": {"period": 3}}})


def test_configs_are_frozen():
    cfg = parse_config({})
    with pytest.raises(Exception, match="frozen"):
        cfg.train.epochs = 3


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "b.yaml").write_text("train: {epochs: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "b.yaml")
    with pytest.raises(ConfigError, match="needs data.root"):
        parse_config({"data": {"dataset": "cifar10"}})
    (tmp_path / "empty.yaml").write_text("methods:\n")
    assert load_config(tmp_path / "empty.yaml") == parse_config({})  # an empty section is all defaults


def test_exponent_floats_are_numbers_in_yaml_files_and_overrides(tmp_path):
    """``1e-3`` (no dot) is a number, as YAML 1.2 and every user reads it; PyYAML alone makes it a string."""
    from lawa_benchmarks.config_base import apply_overrides, load_yaml

    path = tmp_path / "c.yaml"
    path.write_text("a: 1e-3\nb: [2E+2, -5e-1]\nc: e5\nd: 1.5\n")
    assert load_yaml(path) == {"a": 0.001, "b": [200.0, -0.5], "c": "e5", "d": 1.5}
    raw: dict = {}
    assert apply_overrides(raw, ["train.lr=1e-3", "name=1e3x"]) == []
    assert raw == {"train": {"lr": 0.001}, "name": "1e3x"}
