"""lawa_benchmarks.roberta.config: every shipped RoBERTa config loads; bad configs list every problem at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from lawa_benchmarks.roberta.config import ConfigError, load_config, parse_config
from lawa_benchmarks.roberta.runner import updates_plan

pytest.importorskip("yaml")

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
        parse_config({"name": "x", "bogus": 1, "train": {"epochs": 0, "lr": -1, "warmup_updates": "ten"},
                      "lawa": {"k": 0, "weights": "median"}, "corpus": {"source": "wikitext103"}})
    msg = str(err.value)
    for part in ("bogus", "train.epochs", "train.lr", "train.warmup_updates", "lawa.k", "lawa.weights", "corpus.path"):
        assert part in msg


def test_unknown_section_key_is_named():
    with pytest.raises(ConfigError, match=r"train: unknown key\(s\) \['epoch'\]"):
        parse_config({"name": "x", "train": {"epoch": 3}})


def test_batch_must_split_into_forward_passes():
    with pytest.raises(ConfigError, match="train.batch_size"):
        parse_config({"name": "x", "train": {"batch_size": 50, "max_sentences": 16}})
