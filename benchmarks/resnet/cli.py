"""The click command ``lawa bench resnet``: parses options and calls :func:`~lawa_benchmarks.resnet.runner.run`."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click

from .config import ConfigError, load_config

__all__ = ["log_to_stderr", "resnet"]

_EPILOG = """\b
Examples:
  lawa bench resnet --config configs/quick.yaml --out runs/quick
  lawa bench resnet --config configs/repro.yaml --out runs/repro --seeds 3
  lawa bench resnet --config configs/quick.yaml --methods lawa,exp --out runs/quick_e3 train.epochs=3
  torchrun --nproc_per_node 2 $(which lawa) bench resnet --config configs/quick.yaml --out runs/ddp
  lawa report runs/quick

\b
Killed? Run the same command again: it continues after the last completed epoch.
Another config, overrides or --methods need their own --out (or --fresh).
data.batch_size is per process: under torchrun the global batch is nproc x batch_size.
"""


class _EchoHandler(logging.Handler):
    """Log records of ``lawa_benchmarks`` to stderr through click (the stream is looked up at each record)."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(self.format(record), err=True)


def log_to_stderr() -> None:
    logger = logging.getLogger("lawa_benchmarks")
    if not any(isinstance(h, _EchoHandler) for h in logger.handlers):
        logger.addHandler(_EchoHandler())
    logger.setLevel(logging.INFO)


def _families(text: str | None) -> list[str] | None:
    if text is None:
        return None
    from lawa_optim import list_methods

    known = [n for n in list_methods() if n != "base"]
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known and n != "base"]
    if unknown or not names:
        raise click.BadParameter(
            f"{text!r}: unknown method(s) {unknown}; use a comma-separated list of {', '.join(known)} "
            "(the SGD baseline always runs)", param_hint="--methods")
    return [n for n in names if n != "base"]


@click.command("resnet", epilog=_EPILOG)
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A YAML file, or a shipped config's name: quick (the demo), repro, resnet34_cifar100, "
                   "resnet50_imagenet (configs/NAME.yaml in a clone); default: the built-in defaults.")
@click.option("--methods", default=None,
              help="Comma-separated methods of the zoo to run, e.g. lawa,exp (lawa_optim.list_methods(); "
                   "default: those the config enables; SGD always runs).")
@click.option("--seeds", type=click.IntRange(min=1), default=None, help="Number of seeds (overrides the config).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="The run folder: checkpoints, metrics, report (default: runs/<config name>).")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="Where the data set lies (default: the config's data.root, or /usr/share/datasets/fashion-mnist).")
@click.option("--fresh", is_flag=True, help="Ignore checkpoints in the run folder and start over.")
@click.option("--no-progress", is_flag=True, help="No tqdm progress bars.")
@click.argument("overrides", nargs=-1)
def resnet(config_path: Path | None, methods: str | None, seeds: int | None, out_dir: Path | None,
           data_dir: Path | None, fresh: bool, no_progress: bool, overrides: tuple[str, ...]) -> None:
    """Train a torchvision ResNet with SGD and evaluate LAWA and its comparators every epoch.

    LAWA (for every k of the config), EXP, EMA and SWA are evaluated on one SGD run; Lookahead
    and schedule-free SGD train runs of their own. OVERRIDES are key=value pairs on the config,
    e.g. train.epochs=3 methods.lawa.k=[2,6,10]. Writes RUN_DIR/metrics.csv/json and
    RUN_DIR/report/ (tables and plots) and prints the time-saved table.
    """
    from .data import DataLayoutError, DataMissingError

    families = _families(methods)
    extra = list(overrides) + ([f"seeds={seeds}"] if seeds is not None else [])
    if data_dir is not None:  # a JSON string is a YAML string: any path survives
        extra.append(f"data.root={json.dumps(str(data_dir))}")
    try:
        cfg = load_config(config_path, extra)
    except ConfigError as err:
        raise click.UsageError(str(err)) from err
    if out_dir is None:
        out_dir = Path("runs") / (config_path.stem if config_path else "default")
    from .runner import ResumeError, run

    log_to_stderr()  # the images loaded per split, the global batch
    try:
        result = run(cfg, out_dir, families=families, progress=not no_progress, fresh=fresh)
    except (DataMissingError, DataLayoutError) as err:
        raise click.ClickException(str(err)) from err
    except ResumeError as err:
        raise click.UsageError(str(err)) from err
    info = result.get("report")
    if info is not None:
        click.echo(info["text"])
        click.echo("")
        click.echo(f"report: {Path(out_dir) / 'report'} (report.md, curves.png, time_saved.png, k_sensitivity.png)")
