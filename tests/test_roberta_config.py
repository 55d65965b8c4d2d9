"""lawa_benchmarks.roberta.config: every shipped RoBERTa config loads; bad configs list every problem at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import require

require("yaml")
require("pydantic")

from lawa_benchmarks.config_base import ConfigError as SharedConfigError  # noqa: E402
from lawa_benchmarks.resnet.config import ConfigError as ResnetConfigError  # noqa: E402
from lawa_benchmarks.roberta.config import ConfigError, load_config, parse_config  # noqa: E402
from lawa_benchmarks.roberta.runner import updates_plan  # noqa: E402

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
SHIPPED = ["roberta_small.yaml", "roberta_base_wikitext103.yaml"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_config_loads_and_is_headed_by_its_command(name):
    path = CONFIGS / name
    cfg = load_config(path)
    assert cfg.name == path.stem
    assert path.read_text().splitlines()[0].startswith(f"# lawa bench roberta --config configs/{name}")


def test_base_config_is_the_papers_recipe():
    cfg = load_config(CONFIGS / "roberta_base_wikitext103.yaml")
    t = cfg.train
    assert cfg.model.arch == "roberta_base" and cfg.corpus.source == "wikitext103"
    assert (t.batch_size, t.tokens_per_sample, t.epochs, t.lr) == (2048, 512, 200, 5e-4)
    assert (t.adam_betas, t.adam_eps, t.weight_decay, t.warmup_updates) == ((0.9, 0.98), 1e-6, 0.01, 10000)
    assert cfg.lawa.k == 10 and cfg.lawa.period_updates == 0 and cfg.lawa.weights == "uniform"


def test_percentages_resolve_against_the_run():
    cfg = parse_config({"name": "x", "train": {"epochs": 10, "warmup_updates": "10%", "total_num_update": "600%"}})
    assert updates_plan(cfg, 25) == {"updates_per_epoch": 25, "run_updates": 250, "warmup_updates": 25,
                                     "total_num_update": 1500}
    fixed = parse_config({"name": "x", "train": {"warmup_updates": 7, "total_num_update": 100}})
    assert updates_plan(fixed, 3)["warmup_updates"] == 7


def test_bad_config_lists_every_problem():
    with pytest.raises(ConfigError) as err:
        parse_config({"name": "x", "bogus": 1, "train": {"epochs": 0, "lr": -1, "warmup_updates": "ten", "cpu": "yes"},
                      "lawa": {"k": 0, "weights": "median"}, "corpus": {"source": "wikitext103"}},
                     overrides=["tokenizer.vocab_size=10", "oops"])
    errors = err.value.errors
    for part in ("bogus: unknown key", "train.epochs: 0 is invalid", "train.lr: -1 is invalid",
                 "train.warmup_updates: 'ten' is invalid", "train.cpu: 'yes' is invalid", "lawa.k: 0 is invalid",
                 "lawa.weights: 'median' is invalid", "corpus.path: None is invalid", "tokenizer.vocab_size: 10",
                 "override 'oops'"):
        assert sum(part in e for e in errors) == 1, (part, errors)
    assert len(errors) == 10, errors
    assert str(err.value).startswith("10 problem(s) in config:")


def test_unknown_section_key_is_named():
    with pytest.raises(ConfigError, match=r"train.epoch: unknown key \(did you mean 'epochs'\?\)"):
        parse_config({"name": "x", "train": {"epoch": 3}})
    with pytest.raises(ConfigError, match="name: missing"):
        parse_config({})


def test_batch_must_split_into_forward_passes():
    with pytest.raises(ConfigError, match="train.batch_size=50 is not a multiple of max_sentences"):
        parse_config({"name": "x", "train": {"batch_size": 50, "max_sentences": 16}})


def test_one_config_error_for_both_benchmarks():
    assert ConfigError is SharedConfigError is ResnetConfigError


def test_overrides_apply_before_validation(tmp_path):
    """`source: wikitext103` without `path` is invalid alone, valid once --wikitext's override sets the path."""
    path = tmp_path / "wiki.yaml"
    path.write_text("name: wiki\ncorpus: {source: wikitext103}\ntrain: {epochs: 0}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert [e.split(":")[0] for e in err.value.errors] == ["corpus.path", "train.epochs"]
    cfg = load_config(path, ["corpus.path=/data/wt103", "train.epochs=3"])
    assert (cfg.corpus.source, cfg.corpus.path, cfg.train.epochs) == ("wikitext103", "/data/wt103", 3)
    # an override is validated like the file: a bad one is reported with the file's problems
    with pytest.raises(ConfigError) as err:
        load_config(path, ["train.epochs=-2"])
    assert [e.split(":")[0] for e in err.value.errors] == ["corpus.path", "train.epochs"]
    assert "train.epochs: -2 is invalid" in str(err.value)


def test_configs_are_frozen_and_dump_to_plain_data():
    cfg = parse_config({"name": "x", "train": {"adam_betas": [0.8, 0.9], "extra_args": ["--log-format", "json"]}})
    assert cfg.train.adam_betas == (0.8, 0.9) and cfg.train.extra_args == ("--log-format", "json")
    with pytest.raises(Exception, match="frozen"):
        cfg.train.epochs = 3
    assert parse_config(cfg.model_dump()) == cfg


def test_cli_wikitext_and_epochs_apply_before_validation(tmp_path):
    """`lawa bench roberta --wikitext DIR` makes a config without corpus.path valid: what stops it is the folder."""
    require("click")
    from click.testing import CliRunner

    from lawa_benchmarks.roberta.cli import roberta

    path = tmp_path / "wiki.yaml"
    path.write_text("name: wiki\ncorpus: {source: wikitext103}\ntrain: {epochs: 0}\n")
    res = CliRunner().invoke(roberta, ["--config", str(path), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "corpus.path" in res.output and "train.epochs: 0" in res.output
    res = CliRunner().invoke(roberta, ["--config", str(path), "--out", str(tmp_path / "o"), "--epochs", "2",
                                       "--wikitext", str(tmp_path / "no such dir")])
    assert res.exit_code == 2, res.output
    assert "corpus.path" not in res.output and "train.epochs" not in res.output
    assert "WikiText-103 folder" in res.output and "no such dir" in res.output and "does not exist" in res.output


def test_offload_is_the_librarys_option(tmp_path):
    """lawa.offload takes lawa_optim.offload's names; disk needs offload_dir, which reaches fairseq-train."""
    from lawa_benchmarks.roberta.runner import fairseq_train_command
    from lawa_optim.offload import OFFLOAD_NAMES

    for name in OFFLOAD_NAMES:
        extra = {"offload_dir": str(tmp_path)} if name == "disk" else {}
        assert parse_config({"name": "x", "lawa": {"offload": name, **extra}}).lawa.offload == name
    with pytest.raises(ConfigError) as err:
        parse_config({"name": "x", "lawa": {"offload": "disk"}, "train": {"lr": 0}})
    assert [e.split(":")[0] for e in err.value.errors] == ["train.lr", "lawa"]
    assert "offload='disk' needs the path of a directory" in str(err.value)
    with pytest.raises(ConfigError, match="Invalid offload: 'gpu'"):
        parse_config({"name": "x", "lawa": {"offload": "gpu"}})
    cfg = parse_config({"name": "x", "lawa": {"offload": "disk", "offload_dir": str(tmp_path)}})
    cmd = fairseq_train_command(cfg, tmp_path / "bin", tmp_path / "ckpt", updates_plan(cfg, 10))
    i = cmd.index("--lawa-offload")
    assert cmd[i + 1] == "disk" and cmd[cmd.index("--lawa-offload-dir") + 1] == str(tmp_path)
    plain = parse_config({"name": "x"})
    assert "--lawa-offload-dir" not in fairseq_train_command(plain, tmp_path, tmp_path, updates_plan(plain, 10))
