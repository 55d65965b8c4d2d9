"""The click command ``lawa bench suite``: parses options and calls :func:`~lawa_benchmarks.suite.runner.run`."""

from __future__ import annotations

from pathlib import Path

import click

from .config import ConfigError, load_config

__all__ = ["QUICK", "suite"]

# --quick: every workload for a few short epochs on a small slice, one seed (minutes on 2 cores).
QUICK = ("seeds=1",
         "workloads.resnet.epochs=3", "workloads.resnet.train_images=512", "workloads.resnet.val_images=256",
         "workloads.resnet.bn_images=128",
         "workloads.vit.epochs=3", "workloads.vit.train_images=512", "workloads.vit.val_images=256",
         "workloads.vit.warmup_epochs=1",
         "workloads.gpt.epochs=3", "workloads.gpt.steps_per_epoch=4", "workloads.gpt.val_windows=32",
         "workloads.roberta.epochs=2",
         "methods.swa.swa_start=1", "workloads.vit.methods.swa.swa_start=1",  # half of the 3 epochs
         # the targets of the full runs are out of reach of a few steps: the quick run's own baseline sets them
         "workloads.resnet.target=null", "workloads.vit.target=null", "workloads.gpt.target=null",
         "workloads.roberta.target=null")

_EPILOG = """\b
Examples:
  lawa bench suite --out runs/suite                                   # configs/suite.yaml: 4 workloads x 3 seeds
  lawa bench suite --quick --out runs/suite_quick                     # the same, shortened: minutes
  lawa bench suite --workloads gpt --out runs/suite                   # one workload (another process
  lawa bench suite --report-only --out runs/suite                     #   may run the others)
  lawa bench suite --config my_suite.yaml --out runs/mine             # a config of yours

\b
Killed? Run the same command again: each run continues after its last completed epoch.
Another config, overrides or --methods need their own --out (or --fresh).
"""


def _names(text: str | None, known: list[str], option: str) -> list[str] | None:
    if text is None:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise click.BadParameter(f"{text!r}: unknown {unknown}; use a comma-separated list of {', '.join(known)}",
                                 param_hint=option)
    return names


@click.command("suite", epilog=_EPILOG)
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=Path("suite"),
              show_default=True,
              help="A YAML file or a shipped config's name: suite is configs/suite.yaml (4 workloads, every method).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/suite"),
              show_default=True, help="The suite folder: one run folder per workload, suite.md/csv/json, plots.")
@click.option("--workloads", default=None, help="Comma-separated workloads to run (default: those enabled).")
@click.option("--methods", default=None, help="Comma-separated methods of the zoo (default: those enabled).")
@click.option("--seeds", type=click.IntRange(min=1), default=None, help="Number of seeds (overrides the config).")
@click.option("--quick", is_flag=True,
              help="The config shortened: every workload and method for a few short epochs on a small slice, one "
                   "seed (roberta: 2 epochs); targets set by the quick run's own baseline.")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None, help="Where Fashion-MNIST lies.")
@click.option("--fresh", is_flag=True, help="Ignore checkpoints in the suite folder and start over.")
@click.option("--report-only", is_flag=True, help="Only write the suite's report from the workload folders there.")
@click.option("--no-progress", is_flag=True, help="No tqdm progress bars.")
@click.argument("overrides", nargs=-1)
def suite(config_path: Path | None, out_dir: Path, workloads: str | None, methods: str | None, seeds: int | None,
          quick: bool, data_dir: Path | None, fresh: bool, report_only: bool, no_progress: bool,
          overrides: tuple[str, ...]) -> None:
    """LAWA and its comparators across workloads: steps (and wall-clock) to a fixed target, AlgoPerf-style.

    Each workload (ResNet-10 and a small ViT on Fashion-MNIST, a GPT-2-style character LM on the
    Bible) trains its fixed baseline recipe for every seed; LAWA (every k of the config), EXP, EMA
    and SWA are evaluated on it, Lookahead and schedule-free train runs of their own. The roberta
    workload (when enabled) runs `lawa bench roberta` once per seed: Adam and the plugin's LAWA. Writes
    OUT/<workload>/ (metrics in the report schema) and OUT/suite.md, suite.csv, suite.json and one
    plot per workload, and prints the table. OVERRIDES are key=value pairs on the config, e.g.
    workloads.gpt.epochs=4 methods.lawa.k=[2,6].
    """
    from lawa_optim import list_methods

    from ..resnet.cli import log_to_stderr

    extra = (list(QUICK) if quick else []) + list(overrides) + ([f"seeds={seeds}"] if seeds is not None else [])
    try:
        cfg = load_config(config_path, extra)
    except ConfigError as err:
        raise click.UsageError(str(err)) from err
    names = _names(workloads, cfg.workload_names(), "--workloads")
    families = _names(methods, [n for n in list_methods() if n != "base"], "--methods")
    from .results import write_suite_report
    from .runner import ResumeError, run

    log_to_stderr()
    try:
        if report_only:
            info = write_suite_report(out_dir, cfg)
        else:
            info = run(cfg, out_dir, workloads=names, families=families, data_dir=str(data_dir) if data_dir else None,
                       progress=not no_progress, fresh=fresh)["report"]
    except ResumeError as err:
        raise click.UsageError(str(err)) from err
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        raise click.ClickException(str(err)) from err
    click.echo(info["text"])
    click.echo("")
    for path in info["files"].values():
        click.echo(f"wrote {path}")
