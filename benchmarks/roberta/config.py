"""The RoBERTa benchmark's YAML config, validated by pydantic with every error reported at once.

A config has a name and five sections; every key is optional except ``name``::

    name: roberta_small
    corpus:    {source: bible | wikitext103, path: null, max_train_lines: null, max_eval_lines: null}
    tokenizer: {vocab_size: 4000, model_type: bpe, sample_lines: 2000000}
    model:     {arch: roberta_base, args: {encoder_layers: 2, ...}}   # args become fairseq flags
    train:     {epochs, batch_size, max_sentences, tokens_per_sample, lr, warmup_updates,
                total_num_update, adam_betas, adam_eps, weight_decay, clip_norm, dropout,
                attention_dropout, sample_break_mode, seed, cpu, fp16, threads, extra_args}
    lawa:      {k: 10, period_updates: 0, weights: uniform, alpha: 0.9, offload: none, offload_dir: null}

``warmup_updates`` and ``total_num_update`` take an update count or a percentage of the run's
updates (``"10%"``), resolved once the data is binarized and the updates per epoch are known.
``batch_size`` is the number of sequences per optimizer update; ``max_sentences`` is how many go
through one forward pass, and ``--update-freq`` makes up the difference. ``key=value`` overrides
(the CLI's ``--epochs`` and ``--wikitext DIR`` are ``train.epochs=N`` and
``corpus.source=wikitext103 corpus.path=DIR``) apply to the file before it is validated.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, ValidationInfo, field_validator, model_validator

from ..config_base import ConfigError, Section, load_yaml, validate

__all__ = ["ConfigError", "CorpusCfg", "LAWACfg", "ModelCfg", "RobertaBenchConfig", "TokenizerCfg", "TrainCfg",
           "is_percent", "load_config", "parse_config"]

CORPORA = ("bible", "wikitext103")

PosInt = Annotated[int, Field(gt=0)]
PosFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]
Beta = Annotated[float, Field(ge=0, lt=1)]


def is_percent(v: Any) -> bool:
    """``"10%"``-style values of ``warmup_updates``/``total_num_update``."""
    if not isinstance(v, str) or not v.endswith("%"):
        return False
    try:
        return float(v[:-1]) >= 0
    except ValueError:
        return False


def _updates(v: Any) -> Any:
    if (isinstance(v, int) and not isinstance(v, bool) and v >= 0) or is_percent(v):
        return v
    raise ValueError("use an update count or a percentage of the run's updates such as '10%'")


Updates = Annotated[Any, AfterValidator(_updates)]


class CorpusCfg(Section):
    source: Literal[CORPORA] = "bible"
    path: str | None = Field(None, validate_default=True)  # wikitext103: the folder with wiki.{train,valid,test}.raw
    max_train_lines: PosInt | None = None  # keep at most N training lines, spread over the split
    max_eval_lines: PosInt | None = None  # the same for the validation and test splits

    @field_validator("path")
    @classmethod
    def _wikitext_needs_path(cls, path: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("source") == "wikitext103" and not path:
            raise ValueError("give the folder holding wiki.train.raw, wiki.valid.raw and wiki.test.raw "
                             "(WikiText-103 raw), or pass --wikitext DIR")
        return path


class TokenizerCfg(Section):
    vocab_size: Annotated[int, Field(ge=100)] = 4000
    model_type: Literal["bpe", "unigram"] = "bpe"  # sentencepiece's
    sample_lines: PosInt = 2_000_000  # lines sentencepiece trains on at most


class ModelCfg(Section):
    arch: Annotated[str, Field(min_length=1)] = "roberta_base"  # a fairseq architecture
    args: dict[str, Any] = Field(default_factory=dict)  # extra model flags, e.g. {encoder_layers: 2}


class TrainCfg(Section):
    epochs: PosInt = 20
    batch_size: PosInt = 32
    max_sentences: PosInt = 32
    tokens_per_sample: PosInt = 128
    lr: PosFloat = 5e-4
    warmup_updates: Updates = "10%"
    total_num_update: Updates = "100%"
    adam_betas: tuple[Beta, Beta] = Field((0.9, 0.98), strict=False)  # a YAML list
    adam_eps: PosFloat = 1e-6
    weight_decay: NonNegFloat = 0.01
    clip_norm: NonNegFloat = 0.0
    dropout: NonNegFloat = 0.1
    attention_dropout: NonNegFloat = 0.1
    sample_break_mode: Literal["none", "complete", "complete_doc", "eos"] = "complete"
    seed: PosInt = 1
    cpu: bool = True
    fp16: bool = False
    threads: PosInt | None = None  # OMP/MKL threads for a CPU run (default: torch's choice)
    distributed_world_size: PosInt = 1
    extra_args: tuple[str, ...] = Field((), strict=False)  # fairseq-train flags, a YAML list

    @field_validator("fp16")
    @classmethod
    def _fp16_needs_gpu(cls, fp16: bool, info: ValidationInfo) -> bool:
        if fp16 and info.data.get("cpu"):
            raise ValueError("fp16 needs a GPU: set cpu: false or fp16: false")
        return fp16

    @model_validator(mode="after")
    def _batch_splits_into_passes(self) -> TrainCfg:
        per_step = self.max_sentences * self.distributed_world_size
        if self.batch_size % per_step:
            raise ValueError(f"train.batch_size={self.batch_size} is not a multiple of max_sentences * "
                             f"distributed_world_size = {per_step}; use one")
        return self


class LAWACfg(Section):
    k: PosInt = 10  # the paper: 10 for RoBERTa
    period_updates: Annotated[int, Field(ge=0)] = 0  # 0: one snapshot per epoch
    weights: Literal["uniform", "exp", "linear", "cosine", "1-sqrt"] = "uniform"
    alpha: Annotated[float, Field(gt=0, le=1)] = 0.9
    offload: str = "none"  # the fairseq task's --lawa-offload: lawa_optim.offload.OFFLOAD_NAMES (none, cpu, disk)
    offload_dir: str | None = None  # offload: disk: an existing directory for the ring's files

    @model_validator(mode="after")
    def _offload_is_the_librarys(self) -> LAWACfg:
        from lawa_optim.offload import check_offload, parse_offload

        try:
            check_offload(parse_offload(self.offload), self.offload_dir)
        except (TypeError, ValueError) as err:  # the library's message names the argument and the fix
            raise ValueError(str(err)) from None
        return self


class RobertaBenchConfig(Section):
    name: Annotated[str, Field(min_length=1)]
    corpus: CorpusCfg = Field(default_factory=CorpusCfg)
    tokenizer: TokenizerCfg = Field(default_factory=TokenizerCfg)
    model: ModelCfg = Field(default_factory=ModelCfg)
    train: TrainCfg = Field(default_factory=TrainCfg)
    lawa: LAWACfg = Field(default_factory=LAWACfg)


def parse_config(data: Any, where: str = "config", overrides: list[str] | tuple[str, ...] = ()) -> RobertaBenchConfig:
    """Validate a mapping (a parsed YAML file), ``key=value`` overrides applied first, into a config.

    Raises:
        ConfigError: listing every bad override, unknown key and invalid value at once.
    """
    return validate(RobertaBenchConfig, data, overrides, where)


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RobertaBenchConfig:
    """Read a YAML config file, apply ``key=value`` overrides (e.g. ``train.epochs=40``), then validate."""
    return parse_config(load_yaml(path), str(path), overrides)
