"""``lawa bench pretrain``: LAWA where LLM pre-training uses it: a constant learning rate and merges
of the latest checkpoints instead of a decay (WSM), against cosine and warmup-stable-decay (WSD).

The suite's GPT workload (:mod:`lawa_benchmarks.suite.workloads.gpt`: a GPT-2-style causal LM on
the characters of the World English Bible, AdamW) trained ``T = steps`` steps, per seed, with:

- ``cosine``: linear warm-up, then cosine to zero over the budget; one run per budget
  ``b * T`` (``budgets``), because a cosine run is only good at the end it was planned for;
- ``constant``: linear warm-up, then the peak learning rate to the end. A
  :class:`~lawa_optim.LAWAWrapper` ring of ``ring`` slots takes a snapshot every
  ``snapshot_every`` steps; at every evaluation, every window ``j`` of ``windows`` and every
  weight scheme of ``weights`` (``uniform`` = LAWA = the linear decay, ``cosine``, ``1-sqrt``,
  ``exp``: :mod:`lawa_optim.averaging`) is swapped in from that one ring and evaluated;
  :class:`~lawa_optim.OnlineK` picks the uniform window on a selection split (the Bible's test
  books: never trained on, never reported);
- ``wsd``: the constant run's state at ``(1 - cooldown_fraction) * b * T``, then a cooldown of
  the learning rate to zero over the last ``cooldown_fraction * b * T`` steps, one branch per budget.

Every run sees the same batches at the same step (a function of ``(seed, step)`` only). What it
costs to have a model at every budget: cosine ``sum(budgets) * T`` steps, WSD
``(1 - f) * T + f * sum(budgets) * T``, the merges only the constant run (``T``).

Results: ``OUT/pretrain.json`` (every evaluation), ``OUT/pretrain.csv``, ``OUT/pretrain.md`` (the
tables), ``OUT/pretrain_curves.png``, ``OUT/pretrain_budgets.png``, ``OUT/pretrain_windows.png``.
A killed run resumes from ``OUT/seed<N>/<run>.pt`` (written atomically at every evaluation) to
the same numbers.
"""

from __future__ import annotations

import json
import math
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import Field, field_validator, model_validator

from .config_base import Section, config_diff, load_yaml, validate

__all__ = ["PretrainConfig", "load_config", "lr_multiplier", "run", "run_seed"]

PosInt = Annotated[int, Field(gt=0)]
Fraction = Annotated[float, Field(gt=0, le=1)]
SCHEMES = ("uniform", "cosine", "1-sqrt", "exp", "linear")


class PretrainConfig(Section):
    """The experiment; defaults are ``configs/pretrain.yaml``'s."""

    seeds: list[int] = [0, 1, 2]
    steps: PosInt = 3200  # T, the longest budget
    warmup_steps: Annotated[int, Field(ge=0)] = 100
    eval_every: PosInt = 100
    snapshot_every: PosInt = 50  # nu: steps between two snapshots of the ring
    ring: PosInt = 16  # K: the largest window
    windows: list[PosInt] = [2, 4, 8, 16]
    weights: list[str] = ["uniform", "cosine", "1-sqrt", "exp"]
    alpha: Fraction = 0.5  # EXP's decay for the exp scheme
    budgets: list[Fraction] = [0.25, 0.5, 0.75, 1.0]
    cooldown_fraction: Fraction = 0.2
    cooldown_shape: Literal["linear", "cosine", "1-sqrt"] = "linear"
    # the model and the data: the suite's GPT workload's fields
    context: PosInt = 64
    width: PosInt = 128
    depth: PosInt = 2
    heads: PosInt = 4
    batch_size: PosInt = 32
    val_windows: PosInt = 128
    selection_windows: PosInt = 64
    lr: Annotated[float, Field(gt=0)] = 3.0e-3
    betas: Annotated[list[float], Field(min_length=2, max_length=2)] = [0.9, 0.98]
    weight_decay: Annotated[float, Field(ge=0)] = 0.01
    device: Literal["cpu", "cuda"] = "cpu"  # cuda: model, batches and the ring on the GPU

    @field_validator("weights")
    @classmethod
    def _known_schemes(cls, value: list[str]) -> list[str]:
        bad = [w for w in value if w not in SCHEMES]
        if bad:
            raise ValueError(f"unknown weight scheme(s) {bad}; use some of {list(SCHEMES)}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> PretrainConfig:
        problems = []
        if max(self.budgets) != 1.0:
            problems.append(f"budgets {self.budgets} must include 1.0: the cosine run of the whole T is the target "
                            "and the costs are fractions of T")
        if self.eval_every % self.snapshot_every:
            problems.append(f"eval_every ({self.eval_every}) must be a multiple of snapshot_every "
                            f"({self.snapshot_every}), so that a merge evaluated at a budget holds its last weights")
        if max(self.windows) > self.ring:
            problems.append(f"windows {self.windows} exceed the ring's {self.ring} slots; raise ring or drop them")
        for b in self.budgets:
            end = b * self.steps
            if abs(end - round(end)) > 1e-9 or round(end) % self.eval_every:
                problems.append(f"budget {b} * steps {self.steps} = {end} is not a multiple of eval_every "
                                f"({self.eval_every}): every budget must end on an evaluation")
            start = (1 - self.cooldown_fraction) * end
            if abs(start - round(start)) > 1e-9:
                problems.append(f"the cooldown of budget {b} starts at step {start}, not a whole step; "
                                "choose cooldown_fraction * steps * budget whole")
        if self.warmup_steps >= self.steps * min(self.budgets) * (1 - self.cooldown_fraction):
            problems.append(f"warmup_steps {self.warmup_steps} reach into the shortest budget's cooldown")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def budget_steps(self) -> list[int]:
        return [round(b * self.steps) for b in self.budgets]

    def cooldown_start(self, budget_steps: int) -> int:
        return round((1 - self.cooldown_fraction) * budget_steps)


def load_config(path: str | Path | None, overrides: tuple[str, ...] | list[str] = ()) -> PretrainConfig:
    """``configs/pretrain.yaml`` (or defaults for ``None``) with ``key=value`` overrides, validated."""
    raw = load_yaml(path) if path is not None else None
    if isinstance(raw, dict) and "pretrain" in raw:
        raw = raw["pretrain"]
    return validate(PretrainConfig, raw, overrides, source=str(path or "defaults"))


# ----------------------------------------------------------------------------- schedules
def lr_multiplier(schedule: str, step: int, cfg: PretrainConfig, budget: int) -> float:
    """The learning rate of ``step`` (0-based) as a fraction of the peak, for a run of ``budget`` steps.

    ``constant``: warm-up, then 1. ``cosine``: warm-up, then cosine to 0 at ``budget``. ``wsd``:
    the constant schedule, then ``cooldown_shape`` from 1 to 0 over the last ``cooldown_fraction``.
    """
    from lawa_optim.averaging import DECAY_SHAPES

    w = cfg.warmup_steps
    if step < w:
        return (step + 1) / w
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        x = (step - w) / max(budget - w, 1)
        return 0.5 * (1 + math.cos(math.pi * min(x, 1.0)))
    if schedule == "wsd":
        start = cfg.cooldown_start(budget)
        if step < start:
            return 1.0
        return DECAY_SHAPES[cfg.cooldown_shape]((step - start) / (budget - start))
    raise ValueError(f"Invalid schedule: {schedule!r}; use constant, cosine or wsd")


# ----------------------------------------------------------------------------- the workload
def _workload(cfg: PretrainConfig) -> Any:
    from .suite.workloads.gpt import GPTWorkload

    wcfg = types.SimpleNamespace(**cfg.model_dump(), steps_per_epoch=cfg.eval_every)
    return GPTWorkload("pretrain", wcfg).to(cfg.device)


def _selection(workload: Any, n: int) -> torch.Tensor:
    """``n`` windows of the Bible's test books (never trained on, never reported), for OnlineK."""
    from .roberta.corpus import bible_split, bible_verses

    text = "\n".join(v for book, _c, v in bible_verses(None) if bible_split(book) == "test")
    index = {c: i for i, c in enumerate(workload.vocab) if i}
    span = workload.cfg.context + 1
    if len(text) < n * span:
        raise ValueError(f"Invalid selection_windows: {n} windows of {span} characters exceed the test books")
    starts = torch.linspace(0, len(text) - span, n).long().tolist()
    return torch.tensor([[index.get(ch, 0) for ch in text[s:s + span]] for s in starts], device=workload.cfg.device)


class _Batches:
    """The batch of global step ``s``: the workload's epoch ``s // eval_every`` (a function of seed and epoch)."""

    def __init__(self, workload: Any, seed: int) -> None:
        self.workload, self.seed, self._epoch, self._cache = workload, seed, -1, []

    def __call__(self, step: int) -> torch.Tensor:
        epoch, i = divmod(step, self.workload.steps_per_epoch)
        if epoch != self._epoch:
            self._cache, self._epoch = list(self.workload.train_batches(self.seed, epoch)), epoch
        return self._cache[i].to(self.workload.cfg.device)


def _loss_on(workload: Any, model: torch.nn.Module, windows: torch.Tensor) -> float:
    total, n = 0.0, 0
    with torch.no_grad():
        for batch in windows.split(64):
            logits = model(input_ids=batch[:, :-1]).logits
            total += torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum").item()
            n += batch[:, 1:].numel()
    return total / n


# ----------------------------------------------------------------------------- one run
def _save(path: Path, obj: dict[str, Any]) -> None:
    from lawa_optim.io import atomic_save

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save(obj, path)


def _train(cfg: PretrainConfig, workload: Any, seed: int, run: str, schedule: str, budget: int, out: Path,
           evaluate: Callable[[int, Any, Any], list[dict[str, Any]]], start: dict[str, Any] | None = None,
           on_step: Callable[[int, Any, Any], None] | None = None, wrap: Callable[[Any], Any] | None = None,
           progress: bool = True) -> list[dict[str, Any]]:
    """Train one run to ``budget`` steps, evaluating every ``eval_every`` steps; resumable.

    ``start``: ``{"step", "model", "optimizer"}`` to branch from (WSD's cooldowns). ``wrap`` turns
    the base optimizer into what steps (the constant run's LAWA wrapper). ``evaluate(step, model,
    opt)`` returns the rows of one evaluation; ``on_step(step, model, opt)`` runs after each step.
    """
    from tqdm.auto import tqdm

    ckpt = out / f"seed{seed}" / f"{run}.pt"
    torch.manual_seed(seed)
    model = workload.build_model().to(cfg.device)
    base = workload.optimizer(model)
    opt = wrap(base) if wrap else base
    rows: list[dict[str, Any]] = []
    step = 0
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=True, map_location=cfg.device)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        rows, step = state["rows"], state["step"]
    elif start is not None:
        model.load_state_dict(start["model"])
        base.load_state_dict(start["optimizer"])
        step = start["step"]
    batches = _Batches(workload, seed)
    bar = tqdm(total=budget, initial=step, desc=f"seed {seed} {run}", disable=not progress, leave=False)
    model.train()
    while step < budget:
        for group in opt.param_groups:
            group["lr"] = cfg.lr * lr_multiplier(schedule, step, cfg, budget)
        opt.zero_grad(set_to_none=True)
        workload.loss(model, batches(step)).backward()
        opt.step()
        step += 1
        bar.update()
        if on_step is not None:
            on_step(step, model, opt)
        if step % cfg.eval_every == 0 or step == budget:
            model.eval()
            rows += [{"seed": seed, "run": run, "schedule": schedule, "budget": budget, "step": step, **r}
                     for r in evaluate(step, model, opt)]
            model.train()
            _save(ckpt, {"model": model.state_dict(), "optimizer": opt.state_dict(), "rows": rows, "step": step})
    bar.close()
    return rows


def run_seed(cfg: PretrainConfig, seed: int, out: str | Path, progress: bool = True) -> list[dict[str, Any]]:
    """Every run of one seed; returns its rows (also in ``OUT/seed<N>/rows.json`` once done)."""
    from lawa_optim import LAWAWrapper, OnlineK

    out = Path(out)
    done = out / f"seed{seed}" / "rows.json"
    if done.exists():
        return json.loads(done.read_text())
    torch.set_num_threads(1)
    workload = _workload(cfg)
    selection = _selection(workload, cfg.selection_windows)
    budgets = cfg.budget_steps()
    branch_at = {cfg.cooldown_start(b): b for b in budgets}
    rows: list[dict[str, Any]] = []
    timer: dict[str, float] = {}

    def raw_eval(step: int, model: Any, opt: Any) -> list[dict[str, Any]]:
        return [{"method": "raw", "weights": "", "window": 0, "val_loss": workload.evaluate(model)["val_loss"]}]

    # the constant run: the ring, every window and scheme, OnlineK, and the WSD branch points
    online: dict[str, Any] = {}

    def wrap(base: Any) -> Any:
        opt = LAWAWrapper(base, k=cfg.ring, period=cfg.snapshot_every, alpha=cfg.alpha)
        online["k"] = OnlineK(opt, lambda: _loss_on(workload, online["model"], selection), strategy="all")
        return opt

    def constant_eval(step: int, model: Any, opt: Any) -> list[dict[str, Any]]:
        out_rows = raw_eval(step, model, opt)
        if opt.num_snapshots == 0:
            return out_rows
        online["model"] = model
        for scheme in cfg.weights:
            for j in cfg.windows:
                if j > opt.num_snapshots:
                    continue
                with opt.averaged(j, weights=scheme):
                    out_rows.append({"method": "merge", "weights": scheme, "window": j,
                                     "val_loss": workload.evaluate(model)["val_loss"],
                                     "sel_loss": _loss_on(workload, model, selection)})
        picked = online["k"].select()
        with online["k"].averaged():
            out_rows.append({"method": "online_k", "weights": "uniform", "window": picked,
                             "val_loss": workload.evaluate(model)["val_loss"]})
        return out_rows

    def keep_branches(step: int, model: Any, opt: Any) -> None:
        if step in branch_at:
            path = out / f"seed{seed}" / f"branch{branch_at[step]}.pt"
            if not path.exists():
                _save(path, {"step": step, "model": model.state_dict(), "optimizer": opt.optimizer.state_dict()})

    t0 = time.perf_counter()
    rows += _train(cfg, workload, seed, "constant", "constant", cfg.steps, out, constant_eval,
                   on_step=keep_branches, wrap=wrap, progress=progress)
    timer["constant"] = time.perf_counter() - t0
    for b in budgets:
        t0 = time.perf_counter()
        rows += _train(cfg, workload, seed, f"cosine{b}", "cosine", b, out, raw_eval, progress=progress)
        timer[f"cosine{b}"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        start = torch.load(out / f"seed{seed}" / f"branch{b}.pt", weights_only=True, map_location=cfg.device)
        rows += _train(cfg, workload, seed, f"wsd{b}", "wsd", b, out, raw_eval, start=start, progress=progress)
        timer[f"wsd{b}"] = time.perf_counter() - t0
    done.write_text(json.dumps(rows))
    (out / f"seed{seed}" / "times.json").write_text(json.dumps(timer))
    return rows


def _check_resume(cfg: PretrainConfig, out: Path, fresh: bool) -> None:
    """Refuse to go on in ``out`` with another config (what changed, and the fix); ``fresh`` starts over."""
    import shutil

    from .run_state import ResumeError

    path = out / "config.json"
    if fresh:
        for seed_dir in out.glob("seed*"):
            shutil.rmtree(seed_dir)
        path.unlink(missing_ok=True)
        return
    if not path.is_file():
        return
    old, new = json.loads(path.read_text()), json.loads(json.dumps(cfg.model_dump()))
    for free in ("seeds", "device"):  # may change between calls: a seed's folder holds that seed's runs only
        old.pop(free, None)
        new.pop(free, None)
    changed = config_diff(old, new)
    if changed:
        raise ResumeError(f"{str(out)!r} holds runs of another config ({'; '.join(changed)}); "
                          f"use another --out, or --fresh to start over in it")


def run(cfg: PretrainConfig, out: str | Path, jobs: int = 1, progress: bool = True,
        fresh: bool = False) -> dict[str, Any]:
    """All seeds (``jobs`` processes at once, one thread each), then :func:`analyse`; writes the files.

    A folder that holds runs of another config is refused (:class:`~lawa_benchmarks.run_state.ResumeError`)
    unless ``fresh``, which deletes them first.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _check_resume(cfg, out, fresh)
    (out / "config.json").write_text(json.dumps(cfg.model_dump(), indent=1))
    t0 = time.perf_counter()
    if jobs > 1 and len(cfg.seeds) > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(min(jobs, len(cfg.seeds))) as pool:
            per_seed = pool.starmap(run_seed, [(cfg, s, out, False) for s in cfg.seeds])
    else:
        per_seed = [run_seed(cfg, s, out, progress) for s in cfg.seeds]
    rows = [r for seed_rows in per_seed for r in seed_rows]
    where = torch.cuda.get_device_name(0) if cfg.device == "cuda" else f"CPU, {jobs} process(es) of one thread"
    times = {"wall_s_this_call": time.perf_counter() - t0, "device": where, "jobs": jobs,
             "per_seed_s": {s: json.loads((out / f"seed{s}" / "times.json").read_text()) for s in cfg.seeds}}
    (out / "time.json").write_text(json.dumps(times, indent=1))
    from .pretrain_report import write_results

    return write_results(cfg, rows, out)


# ----------------------------------------------------------------------------- the command
QUICK = ("steps=160", "warmup_steps=8", "eval_every=20", "snapshot_every=10", "ring=8", "windows=[2,4,8]",
         "seeds=[0,1]", "width=32", "depth=1", "heads=2", "context=32", "batch_size=8", "val_windows=16",
         "selection_windows=8")


def _command() -> Any:
    import click

    @click.command("pretrain", epilog="""\b
Examples:
  lawa bench pretrain --config configs/pretrain.yaml --out runs/pretrain --jobs 3   # the README's table
  lawa bench pretrain --quick --out runs/pretrain_quick                            # a tiny version, seconds
  lawa bench pretrain --config configs/pretrain.yaml --out runs/p -o steps=2400    # any key=value override
""")
    @click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
                  help="YAML config (configs/pretrain.yaml); default: the built-in defaults, the same values.")
    @click.option("--out", type=click.Path(file_okay=False), required=True,
                  help="Run folder: results, plots and the checkpoints a killed run resumes from.")
    @click.option("--override", "-o", "overrides", multiple=True, help="key=value, e.g. steps=2400 (repeatable).")
    @click.option("--quick", is_flag=True, help="A tiny model and 160 steps, 2 seeds: checks the pipeline.")
    @click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
                  help="Seeds trained at once, one process and one thread each.")
    @click.option("--progress/--no-progress", default=True, show_default=True, help="tqdm progress bars.")
    @click.option("--fresh", is_flag=True, help="Delete the runs in --out first (a folder of another config is "
                                                "refused without it).")
    def pretrain(config_path: str | None, out: str, overrides: tuple[str, ...], quick: bool, jobs: int,
                 progress: bool, fresh: bool) -> None:
        """Constant LR + merges of the ring (every weight scheme and window) vs cosine and WSD, on the Bible LM."""
        from .config_base import ConfigError

        try:
            cfg = load_config(config_path, (*(QUICK if quick else ()), *overrides))
        except ConfigError as err:
            raise click.UsageError(str(err)) from err
        from .run_state import ResumeError

        try:
            a = run(cfg, out, jobs=jobs, progress=progress, fresh=fresh)
        except ResumeError as err:
            raise click.UsageError(str(err)) from err
        click.echo((Path(out) / "pretrain.md").read_text())
        click.echo(f"targets (cosine's final loss per seed): {a['targets']}; files in {out}")

    return pretrain


pretrain = _command()
