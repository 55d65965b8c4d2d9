"""The ResNet benchmark's configuration: YAML validated into dataclasses, every error at once.

A config file is a mapping with the sections below (every key optional, defaults shown by
:class:`Config`). ``key=value`` overrides (``train.epochs=3``, ``methods.lawa.k=[2,6]``) are
applied on top, their values parsed as YAML. :func:`load_config` reports every unknown key,
wrong type and out-of-range value of the file and the overrides together in one
:class:`ConfigError`.

Example:
    >>> cfg = load_config("configs/quick.yaml", overrides=["train.epochs=2", "seeds=1"])
    >>> cfg.train.epochs
    2
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

__all__ = [
    "ARCHS",
    "DATASETS",
    "FAMILIES",
    "Config",
    "ConfigError",
    "config_to_dict",
    "load_config",
    "parse_config",
]

DATASETS = ("fashion-mnist", "cifar10", "cifar100", "imagefolder")
ARCHS = ("resnet8", "resnet10", "resnet18", "resnet34", "resnet50")
STEMS = ("imagenet", "3x3s1", "3x3s2")
SCHEDULES = ("cosine", "constant", "step")
BN_MODES = ("recompute", "copy")
DEVICES = ("auto", "cpu", "cuda")
# method families: those evaluated on the base run, then those that are runs of their own
OBSERVER_FAMILIES = ("lawa", "exp", "ema", "swa")
TRAJECTORY_FAMILIES = ("lookahead", "schedulefree")
FAMILIES = OBSERVER_FAMILIES + TRAJECTORY_FAMILIES


class ConfigError(ValueError):
    """A config with problems; ``errors`` lists every one of them."""

    def __init__(self, errors: list[str], source: str = "config") -> None:
        self.errors = list(errors)
        lines = "\n".join(f"  - {e}" for e in self.errors)
        super().__init__(f"{len(self.errors)} problem(s) in {source}:\n{lines}")


@dataclass
class DataConfig:
    """Where the images come from and how many are used."""

    dataset: str = "fashion-mnist"  # one of DATASETS
    root: str | None = None  # None: /usr/share/datasets/fashion-mnist for fashion-mnist
    train_images: int | None = None  # a fixed random subset of the training set (None: all)
    val_images: int | None = None  # a fixed random subset of the test/validation set (None: all)
    train_eval_images: int = 1000  # training images on which every method's train loss is measured
    bn_images: int = 1024  # training images over which BatchNorm statistics are recomputed
    batch_size: int = 128  # per process
    eval_batch_size: int = 512
    num_workers: int = 0
    image_size: int = 224  # imagefolder only: RandomResizedCrop / CenterCrop size
    augment: bool = True  # cifar: random crop + flip; imagefolder: random resized crop + flip


@dataclass
class ModelConfig:
    """A torchvision ResNet; ``width`` scales every stage (64 is torchvision's)."""

    arch: str = "resnet18"  # one of ARCHS
    width: int = 64
    stem: str = "imagenet"  # imagenet: 7x7/2 + maxpool; 3x3s1 / 3x3s2: one 3x3 conv, no maxpool


@dataclass
class TrainConfig:
    """The base optimizer (SGD with momentum) and its learning-rate schedule (per step)."""

    epochs: int = 10
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # one of SCHEDULES
    warmup_epochs: int = 0
    step_epochs: list[int] = field(default_factory=list)  # schedule=step: epochs where lr *= 0.1


@dataclass
class LawaConfig:
    """LAWA: one wrapper with k = max(k), evaluated for every k of the list."""

    enabled: bool = True
    k: list[int] = field(default_factory=lambda: [6])
    bncopy_k: list[int] = field(default_factory=lambda: [6])  # also reported with the model's BN statistics
    # the wrapper keeps max(k + bncopy_k) snapshots


@dataclass
class ExpConfig:
    enabled: bool = True
    k: int = 10
    alpha: float = 0.9


@dataclass
class EmaConfig:
    enabled: bool = True
    decay: float = 0.999
    update_every: int = 1


@dataclass
class SwaConfig:
    enabled: bool = True
    start_epoch: int | None = None  # first epoch (0-based) whose end weights enter the mean; None: epochs // 2


@dataclass
class LookaheadConfig:
    enabled: bool = False
    k: int = 5
    alpha: float = 0.8


@dataclass
class ScheduleFreeConfig:
    enabled: bool = False
    lr: float = 1.0
    warmup_epochs: float = 1.0


@dataclass
class MethodsConfig:
    lawa: LawaConfig = field(default_factory=LawaConfig)
    exp: ExpConfig = field(default_factory=ExpConfig)
    ema: EmaConfig = field(default_factory=EmaConfig)
    swa: SwaConfig = field(default_factory=SwaConfig)
    lookahead: LookaheadConfig = field(default_factory=LookaheadConfig)
    schedulefree: ScheduleFreeConfig = field(default_factory=ScheduleFreeConfig)


@dataclass
class EvalConfig:
    bn: str = "recompute"  # recompute (default) or copy: BatchNorm statistics of averaged weights
    every: int = 1  # evaluate every this many epochs (the last epoch always)


@dataclass
class ReportConfig:
    headline: str = "lawa_k6"  # the method whose time saved against `base` is the headline
    metric: str = "top1"


@dataclass
class Config:
    """The whole benchmark; see the module docstring."""

    seeds: int = 1
    first_seed: int = 0
    device: str = "auto"  # auto: cuda if available
    threads: int | None = None  # torch.set_num_threads (None: torch's default)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    methods: MethodsConfig = field(default_factory=MethodsConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    report: ReportConfig = field(default_factory=ReportConfig)

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.first_seed, self.first_seed + self.seeds))


# ------------------------------------------------------------------------------ building
def _describe_type(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe_type(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_describe_type(typing.get_args(tp)[0])}"
    return {int: "an int", float: "a number", str: "a string", bool: "true/false", type(None): "null"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _convert(value: Any, tp: Any, where: str, errors: list[str]) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where, errors)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            sub: list[str] = []
            out = _convert(value, a, where, sub)
            if not sub:
                return out
        errors.append(f"{where}: {value!r} is not {_describe_type(tp)}")
        return None
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            value = [value] if isinstance(value, (int, float, str)) and not isinstance(value, bool) else value
        if not isinstance(value, list):
            errors.append(f"{where}: {value!r} is not {_describe_type(tp)}")
            return []
        return [_convert(v, item, f"{where}[{i}]", errors) for i, v in enumerate(value)]
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }.get(tp, True)
    if not ok:
        errors.append(f"{where}: {value!r} is not {_describe_type(tp)}")
        return None
    return float(value) if tp is float else value


def _build(cls: type, raw: Any, where: str, errors: list[str]) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        errors.append(f"{where or 'the config'}: expected a mapping of keys, got {raw!r}")
        return cls()
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            near = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            errors.append(f"{where + '.' if where else ''}{key}: unknown key{hint}; known keys: {', '.join(names)}")
    kwargs = {}
    for name in names:
        if name in raw:
            before = len(errors)
            value = _convert(raw[name], hints[name], f"{where + '.' if where else ''}{name}", errors)
            if len(errors) == before or dataclasses.is_dataclass(hints[name]):  # a section keeps its good keys
                kwargs[name] = value
    return cls(**kwargs)


def _check_values(cfg: Config, errors: list[str]) -> None:
    def need(cond: bool, where: str, value: Any, what: str) -> None:
        if not cond:
            errors.append(f"{where}: {value!r} is invalid; {what}")

    def positive(where: str, value: Any, allow_none: bool = False) -> None:
        if value is None and allow_none:
            return
        need(isinstance(value, (int, float)) and value > 0, where, value, "use a positive number")

    d, m, t, me = cfg.data, cfg.model, cfg.train, cfg.methods
    need(cfg.seeds >= 1, "seeds", cfg.seeds, "use at least 1 seed")
    need(cfg.first_seed >= 0, "first_seed", cfg.first_seed, "use a non-negative int")
    need(cfg.device in DEVICES, "device", cfg.device, f"use one of {', '.join(DEVICES)}")
    positive("threads", cfg.threads, allow_none=True)
    need(d.dataset in DATASETS, "data.dataset", d.dataset, f"use one of {', '.join(DATASETS)}")
    need(d.dataset not in DATASETS or d.dataset == "fashion-mnist" or d.root is not None, "data.root", d.root,
         f"data.dataset={d.dataset!r} needs data.root (or --data-dir): the folder that holds it")
    for name in ("train_images", "val_images"):
        positive(f"data.{name}", getattr(d, name), allow_none=True)
    for name in ("train_eval_images", "bn_images", "batch_size", "eval_batch_size", "image_size"):
        positive(f"data.{name}", getattr(d, name))
    need(d.num_workers >= 0, "data.num_workers", d.num_workers, "use 0 or more")
    need(m.arch in ARCHS, "model.arch", m.arch, f"use one of {', '.join(ARCHS)}")
    positive("model.width", m.width)
    need(m.stem in STEMS, "model.stem", m.stem, f"use one of {', '.join(STEMS)}")
    positive("train.epochs", t.epochs)
    positive("train.lr", t.lr)
    need(0 <= t.momentum < 1, "train.momentum", t.momentum, "use a value in [0, 1)")
    need(t.weight_decay >= 0, "train.weight_decay", t.weight_decay, "use 0 or more")
    need(t.schedule in SCHEDULES, "train.schedule", t.schedule, f"use one of {', '.join(SCHEDULES)}")
    need(0 <= t.warmup_epochs < max(t.epochs, 1), "train.warmup_epochs", t.warmup_epochs,
         "use 0 or more, fewer than train.epochs")
    need(all(isinstance(e, int) and 0 < e < t.epochs for e in t.step_epochs), "train.step_epochs", t.step_epochs,
         "use epochs between 1 and train.epochs - 1")
    need(len(me.lawa.k) > 0 and all(isinstance(k, int) and k >= 1 for k in me.lawa.k), "methods.lawa.k",
         me.lawa.k, "use a non-empty list of positive ints, e.g. [2, 6, 10]")
    need(all(isinstance(k, int) and k >= 1 for k in me.lawa.bncopy_k), "methods.lawa.bncopy_k",
         me.lawa.bncopy_k, "use a list of positive ints (may be empty)")
    need(me.exp.k >= 1, "methods.exp.k", me.exp.k, "use a positive int")
    need(0 < me.exp.alpha <= 1, "methods.exp.alpha", me.exp.alpha, "use a value in (0, 1]")
    need(0 <= me.ema.decay < 1, "methods.ema.decay", me.ema.decay, "use a value in [0, 1)")
    need(me.ema.update_every >= 1, "methods.ema.update_every", me.ema.update_every, "use a positive int")
    need(me.swa.start_epoch is None or 0 <= me.swa.start_epoch < t.epochs, "methods.swa.start_epoch",
         me.swa.start_epoch, "use an epoch in [0, train.epochs), or null for half of train.epochs")
    need(me.lookahead.k >= 1, "methods.lookahead.k", me.lookahead.k, "use a positive int")
    need(0 < me.lookahead.alpha <= 1, "methods.lookahead.alpha", me.lookahead.alpha, "use a value in (0, 1]")
    positive("methods.schedulefree.lr", me.schedulefree.lr)
    need(me.schedulefree.warmup_epochs >= 0, "methods.schedulefree.warmup_epochs", me.schedulefree.warmup_epochs,
         "use 0 or more")
    need(cfg.eval.bn in BN_MODES, "eval.bn", cfg.eval.bn, f"use one of {', '.join(BN_MODES)}")
    positive("eval.every", cfg.eval.every)
    need(cfg.report.metric in ("top1", "top5", "val_loss"), "report.metric", cfg.report.metric,
         "use top1, top5 or val_loss")


def _set_path(raw: dict, dotted: str, value: Any, errors: list[str]) -> None:
    node = raw
    keys = dotted.split(".")
    for key in keys[:-1]:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            errors.append(f"override {dotted}: {key!r} is not a section")
            return
        node = child
    node[keys[-1]] = value


def parse_config(raw: dict | None, overrides: list[str] | tuple[str, ...] = (), source: str = "config") -> Config:
    """Validate a mapping (a loaded YAML file) plus ``key=value`` overrides into a :class:`Config`.

    Raises:
        ConfigError: listing every problem found.
    """
    import copy

    import yaml

    errors: list[str] = []
    raw = copy.deepcopy(raw) if raw is not None else {}
    if not isinstance(raw, dict):
        raise ConfigError([f"the top level must be a mapping of sections, got {type(raw).__name__}"], source)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            errors.append(f"override {item!r}: write it as key=value, e.g. train.epochs=3")
            continue
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as err:
            errors.append(f"override {item!r}: the value is not valid YAML ({err})")
            continue
        _set_path(raw, key.strip(), value, errors)
    cfg = _build(Config, raw, "", errors)
    _check_values(cfg, errors)  # fields that failed to convert kept their (valid) defaults
    if errors:
        raise ConfigError(errors, source)
    return cfg


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML config (``None``: all defaults) and apply ``key=value`` overrides."""
    import yaml

    if path is None:
        return parse_config({}, overrides, "the defaults")
    path = Path(path)
    if not path.is_file():
        raise ConfigError([f"config file {str(path)!r} does not exist; the shipped ones are in configs/"], str(path))
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError([f"not valid YAML: {err}"], str(path)) from err
    return parse_config(raw, overrides, str(path))


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """A plain dict (YAML/JSON-ready) of every value, defaults included."""
    return dataclasses.asdict(cfg)
