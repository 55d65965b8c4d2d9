"""The RoBERTa benchmark's YAML config, validated into dataclasses with every error reported at once.

A config has five sections; every key is optional except where said::

    name: roberta_small
    corpus:    {source: bible | wikitext103, path: null, max_train_lines: null, max_eval_lines: null}
    tokenizer: {vocab_size: 4000, model_type: bpe, sample_lines: 2000000}
    model:     {arch: roberta_base, args: {encoder_layers: 2, ...}}   # args become fairseq flags
    train:     {epochs, batch_size, max_sentences, tokens_per_sample, lr, warmup_updates,
                total_num_update, adam_betas, adam_eps, weight_decay, clip_norm, dropout,
                attention_dropout, sample_break_mode, seed, cpu, fp16, threads, extra_args}
    lawa:      {k: 10, period_updates: 0, weights: uniform, alpha: 0.9, offload: none}

``warmup_updates`` and ``total_num_update`` take an update count or a percentage of the run's
updates (``"10%"``), resolved once the data is binarized and the updates per epoch are known.
``batch_size`` is the number of sequences per optimizer update; ``max_sentences`` is how many go
through one forward pass, and ``--update-freq`` makes up the difference.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ConfigError", "CorpusCfg", "LAWACfg", "ModelCfg", "RobertaBenchConfig", "TokenizerCfg", "TrainCfg",
           "load_config", "parse_config"]

CORPORA = ("bible", "wikitext103")


class ConfigError(ValueError):
    """A config that does not validate; the message lists every problem."""


@dataclass(frozen=True)
class CorpusCfg:
    source: str = "bible"
    path: str | None = None  # wikitext103: the folder holding wiki.{train,valid,test}.raw
    max_train_lines: int | None = None  # keep at most N training lines, spread over the split
    max_eval_lines: int | None = None  # the same for the validation and test splits


@dataclass(frozen=True)
class TokenizerCfg:
    vocab_size: int = 4000
    model_type: str = "bpe"  # sentencepiece: bpe or unigram
    sample_lines: int = 2_000_000  # lines sentencepiece trains on at most


@dataclass(frozen=True)
class ModelCfg:
    arch: str = "roberta_base"
    args: dict = field(default_factory=dict)  # extra model flags, e.g. {encoder_layers: 2}


@dataclass(frozen=True)
class TrainCfg:
    epochs: int = 20
    batch_size: int = 32
    max_sentences: int = 32
    tokens_per_sample: int = 128
    lr: float = 5e-4
    warmup_updates: int | str = "10%"
    total_num_update: int | str = "100%"
    adam_betas: tuple = (0.9, 0.98)
    adam_eps: float = 1e-6
    weight_decay: float = 0.01
    clip_norm: float = 0.0
    dropout: float = 0.1
    attention_dropout: float = 0.1
    sample_break_mode: str = "complete"
    seed: int = 1
    cpu: bool = True
    fp16: bool = False
    threads: int | None = None  # OMP/MKL threads for a CPU run (default: torch's choice)
    distributed_world_size: int = 1
    extra_args: tuple = ()


@dataclass(frozen=True)
class LAWACfg:
    k: int = 10
    period_updates: int = 0
    weights: str = "uniform"
    alpha: float = 0.9
    offload: str = "none"


@dataclass(frozen=True)
class RobertaBenchConfig:
    name: str
    corpus: CorpusCfg = field(default_factory=CorpusCfg)
    tokenizer: TokenizerCfg = field(default_factory=TokenizerCfg)
    model: ModelCfg = field(default_factory=ModelCfg)
    train: TrainCfg = field(default_factory=TrainCfg)
    lawa: LAWACfg = field(default_factory=LAWACfg)


_SECTIONS = {"corpus": CorpusCfg, "tokenizer": TokenizerCfg, "model": ModelCfg, "train": TrainCfg, "lawa": LAWACfg}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (isinstance(v, (int, float))) and not isinstance(v, bool)


def is_percent(v: Any) -> bool:
    """``"10%"``-style values of ``warmup_updates``/``total_num_update``."""
    if not isinstance(v, str) or not v.endswith("%"):
        return False
    try:
        return float(v[:-1]) >= 0
    except ValueError:
        return False


def _check(cfg: RobertaBenchConfig) -> list[str]:
    errors: list[str] = []

    def need(ok: bool, where: str, value: Any, fix: str) -> None:
        if not ok:
            errors.append(f"{where}: {value!r} is invalid; {fix}")

    c, t, m, tr, la = cfg.corpus, cfg.tokenizer, cfg.model, cfg.train, cfg.lawa
    need(isinstance(cfg.name, str) and bool(cfg.name), "name", cfg.name, "give the run a name")
    need(c.source in CORPORA, "corpus.source", c.source, f"use one of {CORPORA}")
    if c.source == "wikitext103":
        need(isinstance(c.path, str) and bool(c.path), "corpus.path", c.path,
             "give the folder holding wiki.train.raw, wiki.valid.raw and wiki.test.raw (WikiText-103 raw)")
    for key in ("max_train_lines", "max_eval_lines"):
        v = getattr(c, key)
        need(v is None or (_is_int(v) and v > 0), f"corpus.{key}", v, "use a positive int or null")
    need(_is_int(t.vocab_size) and t.vocab_size >= 100, "tokenizer.vocab_size", t.vocab_size, "use an int >= 100")
    need(t.model_type in ("bpe", "unigram"), "tokenizer.model_type", t.model_type, "use bpe or unigram")
    need(_is_int(t.sample_lines) and t.sample_lines > 0, "tokenizer.sample_lines", t.sample_lines, "use a positive int")
    need(isinstance(m.arch, str) and bool(m.arch), "model.arch", m.arch,
         "name a fairseq architecture, e.g. roberta_base")
    need(isinstance(m.args, dict), "model.args", m.args, "use a mapping of fairseq model flags")
    for key in ("epochs", "batch_size", "max_sentences", "tokens_per_sample", "seed", "distributed_world_size"):
        v = getattr(tr, key)
        need(_is_int(v) and v > 0, f"train.{key}", v, "use a positive int")
    if _is_int(tr.batch_size) and _is_int(tr.max_sentences) and _is_int(tr.distributed_world_size) and tr.max_sentences:
        per_step = tr.max_sentences * tr.distributed_world_size
        need(tr.batch_size % per_step == 0 if per_step else False, "train.batch_size", tr.batch_size,
             f"use a multiple of max_sentences * distributed_world_size = {per_step}")
    for key in ("lr", "adam_eps"):
        v = getattr(tr, key)
        need(_is_num(v) and v > 0, f"train.{key}", v, "use a positive number")
    for key in ("weight_decay", "clip_norm", "dropout", "attention_dropout"):
        v = getattr(tr, key)
        need(_is_num(v) and v >= 0, f"train.{key}", v, "use a number >= 0")
    for key in ("warmup_updates", "total_num_update"):
        v = getattr(tr, key)
        need((_is_int(v) and v >= 0) or is_percent(v), f"train.{key}", v,
             "use an update count or a percentage of the run's updates such as '10%'")
    need(isinstance(tr.adam_betas, (list, tuple)) and len(tr.adam_betas) == 2 and all(_is_num(b) and 0 <= b < 1
                                                                                  for b in tr.adam_betas),
         "train.adam_betas", tr.adam_betas, "use two numbers in [0, 1), e.g. [0.9, 0.98]")
    need(tr.sample_break_mode in ("none", "complete", "complete_doc", "eos"), "train.sample_break_mode",
         tr.sample_break_mode, "use none, complete, complete_doc or eos")
    for key in ("cpu", "fp16"):
        need(isinstance(getattr(tr, key), bool), f"train.{key}", getattr(tr, key), "use true or false")
    need(not (tr.cpu and tr.fp16), "train.fp16", tr.fp16, "fp16 needs a GPU: set cpu: false or fp16: false")
    need(tr.threads is None or (_is_int(tr.threads) and tr.threads > 0), "train.threads", tr.threads,
         "use a positive int or null")
    need(isinstance(tr.extra_args, (list, tuple)) and all(isinstance(a, str) for a in tr.extra_args),
         "train.extra_args", tr.extra_args, "use a list of strings (fairseq-train flags)")
    need(_is_int(la.k) and la.k > 0, "lawa.k", la.k, "use a positive int (the paper: 10 for RoBERTa)")
    need(_is_int(la.period_updates) and la.period_updates >= 0, "lawa.period_updates", la.period_updates,
         "use 0 (one snapshot per epoch) or a positive number of updates")
    need(la.weights in ("uniform", "exp"), "lawa.weights", la.weights, "use uniform or exp")
    need(_is_num(la.alpha) and 0 < la.alpha <= 1, "lawa.alpha", la.alpha, "use a number in (0, 1]")
    need(la.offload in ("none", "cpu"), "lawa.offload", la.offload, "use none or cpu")
    return errors


def parse_config(data: Any, where: str = "config") -> RobertaBenchConfig:
    """Validate a mapping (a parsed YAML file) into a :class:`RobertaBenchConfig`.

    Raises:
        ConfigError: listing every unknown key and invalid value at once.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping with name/corpus/tokenizer/model/train/lawa, got {data!r}")
    errors: list[str] = []
    unknown = sorted(set(data) - set(_SECTIONS) - {"name"})
    if unknown:
        errors.append(f"unknown top-level key(s) {unknown}; use name, {', '.join(_SECTIONS)}")
    kwargs: dict[str, Any] = {"name": data.get("name", "")}
    for section, cls in _SECTIONS.items():
        raw = data.get(section) or {}
        if not isinstance(raw, dict):
            errors.append(f"{section}: expected a mapping, got {raw!r}")
            continue
        names = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(raw) - names)
        if bad:
            errors.append(f"{section}: unknown key(s) {bad}; known: {sorted(names)}")
        values = {k: v for k, v in raw.items() if k in names}
        for key in ("adam_betas", "extra_args"):
            if isinstance(values.get(key), list):
                values[key] = tuple(values[key])
        kwargs[section] = cls(**values)
    cfg = RobertaBenchConfig(**kwargs)
    errors += _check(cfg)
    if errors:
        raise ConfigError(f"{where}: " + "; ".join(errors))
    return cfg


def load_config(path: str | Path) -> RobertaBenchConfig:
    """Read and validate a YAML config file."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config {str(path)!r} does not exist; the shipped ones are in configs/")
    with open(path) as f:
        data = yaml.safe_load(f)
    return parse_config(data, where=str(path))
