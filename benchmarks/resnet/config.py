"""The ResNet benchmark's configuration: YAML validated by pydantic, every error at once.

A config file is a mapping with the sections below (every key optional, defaults shown by the
models). ``key=value`` overrides (``train.epochs=3``, ``methods.lawa.k=[2,6]``) are applied to
the file's mapping before it is validated, their values parsed as YAML; :func:`load_config`
reports every unknown key, wrong type and out-of-range value of the file and the overrides
together in one :class:`~lawa_benchmarks.config_base.ConfigError`.

``methods`` has one section per method of the zoo's registry (:func:`lawa_optim.list_methods`,
``base`` aside: the SGD baseline always runs), built from the registry when a config is parsed:
``enabled`` (default: on for methods that observe the base run and need no optional package) and
every keyword argument the method accepts, with the registry's default. The benchmark gives
``period`` itself (one snapshot per epoch, so options counted in snapshots count epochs) and
states an option in other units where the method's ``MethodInfo.units`` says so (no method is
named here): ``"windows"`` makes it a list of windows evaluated from one ring, with
``bncopy_<option>`` the windows also evaluated with the model's BatchNorm statistics
(``lawa.k``, ``lawa.bncopy_k``); ``"epochs"`` states ``X_steps`` as ``X_epochs``
(``schedulefree.warmup_epochs``); ``lr: "constant"`` adds ``lr``, the learning rate of the
method's own run (null: the recipe's). A method's values are checked by the
method itself (created once, with the options its section gives, on a one-element model), so
its own error message is reported, beside every other problem of the config.

Example:
    >>> cfg = load_config("configs/quick.yaml", overrides=["train.epochs=2", "seeds=1"])
    >>> cfg.train.epochs, cfg.methods.exp.alpha
    (2, 0.9)
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BeforeValidator,
    Field,
    ValidationInfo,
    create_model,
    field_validator,
)

from ..config_base import ConfigError, Section, load_yaml, validate

__all__ = [
    "ARCHS",
    "DATASETS",
    "Config",
    "ConfigError",
    "DataConfig",
    "MethodConfig",
    "MethodsConfig",
    "ModelConfig",
    "config_to_dict",
    "load_config",
    "parse_config",
]

DATASETS = ("fashion-mnist", "cifar10", "cifar100", "imagefolder")
ARCHS = ("resnet8", "resnet10", "resnet18", "resnet34", "resnet50")
STEMS = ("imagenet", "3x3s1", "3x3s2")
SCHEDULES = ("cosine", "constant", "step")
SET_BY_RUNNER = ("period",)  # one snapshot per epoch: the runner passes the steps per epoch

PosInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
PosFloat = Annotated[float, Field(gt=0)]


class DataConfig(Section):
    """Where the images come from and how many are used."""

    dataset: Literal[DATASETS] = "fashion-mnist"
    root: str | None = Field(None, validate_default=True)  # None: /usr/share/datasets/fashion-mnist for fashion-mnist
    train_images: PosInt | None = None  # a fixed random subset of the training set (None: all)
    val_images: PosInt | None = None  # a fixed random subset of the test/validation set (None: all)
    train_eval_images: PosInt = 1000  # training images on which every method's train loss is measured
    bn_images: PosInt = 1024  # training images over which BatchNorm statistics are recomputed
    batch_size: PosInt = 128  # per process
    eval_batch_size: PosInt = 512
    num_workers: NonNegInt = 0
    image_size: PosInt = 224  # imagefolder only: RandomResizedCrop / CenterCrop size
    augment: bool = True  # cifar: random crop + flip; imagefolder: random resized crop + flip

    @field_validator("root")
    @classmethod
    def _root_for_other_datasets(cls, root: str | None, info: ValidationInfo) -> str | None:
        dataset = info.data.get("dataset")
        if root is None and dataset not in (None, "fashion-mnist"):
            raise ValueError(f"data.dataset={dataset!r} needs data.root (or --data-dir): the folder that holds it")
        return root


class ModelConfig(Section):
    """A torchvision ResNet; ``width`` scales every stage (64 is torchvision's)."""

    arch: Literal[ARCHS] = "resnet18"
    width: PosInt = 64
    stem: Literal[STEMS] = "imagenet"  # imagenet: 7x7/2 + maxpool; 3x3s1 / 3x3s2: one 3x3 conv, no maxpool


class TrainConfig(Section):
    """The base optimizer (SGD with momentum) and its learning-rate schedule (per step)."""

    epochs: PosInt = 10
    lr: PosFloat = 0.1
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    nesterov: bool = False
    weight_decay: Annotated[float, Field(ge=0)] = 5e-4
    schedule: Literal[SCHEDULES] = "cosine"
    warmup_epochs: NonNegInt = 0  # linear warm-up, then the schedule over the remaining epochs
    step_epochs: list[int] = Field(default_factory=list)  # schedule=step: epochs where lr *= 0.1

    @field_validator("warmup_epochs")
    @classmethod
    def _warmup_within_run(cls, warmup: int, info: ValidationInfo) -> int:
        epochs = info.data.get("epochs")
        if epochs is not None and warmup >= epochs:
            raise ValueError(f"use fewer warm-up epochs than train.epochs={epochs}")
        return warmup

    @field_validator("step_epochs")
    @classmethod
    def _steps_within_run(cls, steps: list[int], info: ValidationInfo) -> list[int]:
        epochs, warmup = info.data.get("epochs"), info.data.get("warmup_epochs", 0)
        if epochs is not None and not all(warmup < e < epochs for e in steps):
            raise ValueError(f"use epochs after the warm-up ({warmup}) and before train.epochs={epochs}")
        return steps


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, int) and not isinstance(value, bool) else value


Windows = Annotated[list[PosInt], BeforeValidator(_as_list)]


class MethodConfig(Section):
    """One method's section: ``enabled`` and the method's keyword arguments (see the module docstring)."""

    registry_name: ClassVar[str] = ""
    registry_options: ClassVar[tuple[str, ...]] = ()  # the fields that are keyword arguments of the method
    enabled: bool = True

    def method_kwargs(self) -> dict[str, Any]:
        """The method's keyword arguments this section sets (the benchmark's own options excluded)."""
        return {k: getattr(self, k) for k in self.registry_options}


class MethodsConfig(Section):
    """One :class:`MethodConfig` per registered method, in registry order (see :func:`config_model`)."""

    infos: ClassVar[tuple[Any, ...]] = ()  # the registry's MethodInfo of each section

    def names(self) -> list[str]:
        return list(type(self).model_fields)

    def __getitem__(self, name: str) -> MethodConfig:
        if name not in type(self).model_fields:
            raise KeyError(f"no method {name!r} in this config; it has {self.names()}")
        return getattr(self, name)


def epochs_name(option: str) -> str:
    """The config's name of an option stated in epochs: ``warmup_steps`` -> ``warmup_epochs``."""
    return option.removesuffix("_steps") + "_epochs"


def _own_options(units: dict[str, str], registry_defaults: dict[str, Any]) -> tuple[dict[str, Any], tuple[str, ...]]:
    """The options the benchmark states in other units than the method (``MethodInfo.units``: pydantic field
    definitions), and the method's keyword arguments they stand for (set by :mod:`.methods` from them)."""
    fields: dict[str, Any] = {}
    replaced = []
    for option, unit in units.items():
        if unit == "windows":  # the windows evaluated (all from one ring), and those also with the model's BN
            default = registry_defaults[option]
            fields[option] = (Windows, Field(default_factory=lambda d=default: [d], min_length=1))
            fields[f"bncopy_{option}"] = (Windows, Field(default_factory=lambda d=default: [d]))
            replaced.append(option)
        elif unit == "epochs":  # X_steps stated as X_epochs
            fields[epochs_name(option)] = (Annotated[float, Field(ge=0)], float(registry_defaults[option]))
            replaced.append(option)
        elif option == "lr" and unit == "constant":  # the learning rate of the method's own run (null: the recipe's)
            fields["lr"] = (PosFloat | None, None)
    return fields, tuple(replaced)


def _method_model(info: Any) -> type[MethodConfig]:
    defaults = info.accepted_kwargs()
    own, replaced = _own_options(dict(info.units), defaults)
    fields: dict[str, Any] = {"enabled": (bool, not info.changes_trajectory and info.requires is None)}
    options = [k for k in defaults if k not in SET_BY_RUNNER and k not in replaced]
    fields.update({k: (Any, defaults[k]) for k in options})
    fields.update(own)
    model = create_model(f"{info.name}_config", __base__=MethodConfig, **fields)
    model.registry_name, model.registry_options = info.name, tuple(options)
    return model


@functools.lru_cache(maxsize=4)
def _config_model(registry: tuple[tuple[str, int], ...]) -> type[Config]:
    from lawa_optim import get_method_info

    infos = [get_method_info(name) for name, _ in registry]
    sections = {i.name: _method_model(i) for i in infos}
    methods = create_model("methods_config", __base__=MethodsConfig,
                           **{name: (m, Field(default_factory=m)) for name, m in sections.items()})
    methods.infos = tuple(infos)  # held, so that the ids of the cache key stay theirs
    return create_model("config", __base__=Config, methods=(methods, Field(default_factory=methods)))


def _method_errors(raw: dict) -> list[str]:
    """Each method checks its own options: created once, with the options a section gives, on a one-element model."""
    import torch

    import lawa_optim

    errors = []
    sections = raw.get("methods")
    for name, model in config_model().model_fields["methods"].annotation.model_fields.items():
        section = sections.get(name) if isinstance(sections, dict) else None
        given = {k: v for k, v in section.items() if k in model.annotation.registry_options} \
            if isinstance(section, dict) else {}
        if not given:
            continue
        sgd = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.9)
        try:
            lawa_optim.create(name, sgd, **given)
        except ImportError:
            pass  # its optional package is missing: creating it for a run says how to install it
        except (TypeError, ValueError, RuntimeError) as err:
            errors.append(f"methods.{name}: {err}")
    return errors


def config_model() -> type[Config]:
    """:class:`Config` with a ``methods`` section for every method registered now (cached per registry state)."""
    from lawa_optim import get_method_info, list_methods

    return _config_model(tuple((n, id(get_method_info(n))) for n in list_methods() if n != "base"))


class EvalConfig(Section):
    bn: Literal["recompute", "copy"] = "recompute"  # BatchNorm statistics of averaged weights
    every: PosInt = 1  # evaluate every this many epochs (the last epoch always)


class ReportConfig(Section):
    headline: str = "lawa_k6"  # the method whose time saved against `base` is the headline
    metric: Literal["top1", "top5", "val_loss"] = "top1"


class Config(Section):
    """The whole benchmark; see the module docstring. Build it with :func:`parse_config` / :func:`load_config`."""

    seeds: PosInt = 1
    first_seed: NonNegInt = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: cuda if available
    threads: PosInt | None = None  # torch.set_num_threads (None: torch's default)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    methods: MethodsConfig = Field(default_factory=MethodsConfig)  # replaced by config_model()'s
    eval: EvalConfig = Field(default_factory=EvalConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.first_seed, self.first_seed + self.seeds))


def parse_config(raw: dict | None, overrides: list[str] | tuple[str, ...] = (), source: str = "config") -> Config:
    """Validate a mapping (a loaded YAML file) with ``key=value`` overrides applied first into a :class:`Config`.

    Raises:
        ConfigError: listing every problem found.
    """
    return validate(config_model(), raw, overrides, source, checks=_method_errors)


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML config (``None``: all defaults) and apply ``key=value`` overrides before validating."""
    if path is None:
        return parse_config({}, overrides, "the defaults")
    return parse_config(load_yaml(path), overrides, str(path))


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """A plain dict (YAML/JSON-ready) of every value, defaults included."""
    return cfg.model_dump(mode="json")
