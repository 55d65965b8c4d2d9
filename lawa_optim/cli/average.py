"""`lawa average`: offline LAWA over saved checkpoints (the click layer over lawa_optim.offline)."""

from __future__ import annotations

from pathlib import Path

import click

_EPILOG = """\b
Examples:
  # LAWA over the 6 newest fairseq epoch checkpoints, loadable by fairseq-validate
  lawa average --sort --last 6 checkpoints/checkpoint[0-9]*.pt --out checkpoints/checkpoint_lawa.pt
  # plain PyTorch state dicts, EXP weights (newest weighted most)
  lawa average ep18.pt ep19.pt ep20.pt --weights exp --alpha 0.9 --out ep20_exp.pt

\b
Floating tensors are averaged in float64 and cast back to their stored dtype; integer and
bool buffers (num_batches_tracked) and other entries are copied from the newest checkpoint.
For {"model": ..., ...} checkpoints (fairseq) the other entries are the newest checkpoint's,
without its optimizer state. The output is written atomically: a crash leaves the old file.
"""


@click.command(epilog=_EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument(
    "checkpoints", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="File to write the average to (never one of the inputs, unless --force).")
@click.option("--last", "-k", type=click.IntRange(min=1), default=None,
              help="Average only the K newest checkpoints (default: all given).")
@click.option("--weights", type=click.Choice(["uniform", "exp"]), default="uniform", show_default=True,
              help="uniform: LAWA's plain mean; exp: the paper's EXP, the newest weighted most.")
@click.option("--alpha", type=click.FloatRange(0.0, 1.0, min_open=True), default=0.9, show_default=True,
              help="EXP's decay: coefficient alpha*(1-alpha)^age, normalized.")
@click.option("--sort", "sort", is_flag=True,
              help="Order the files naturally (checkpoint9 before checkpoint10) instead of as given (oldest first).")
@click.option("--key", default=None,
              help="Entry holding the state dict, e.g. state_dict (default: 'model' if present, else the whole file).")
@click.option("--nonfinite", type=click.Choice(["raise", "skip"]), default="raise", show_default=True,
              help="A checkpoint holding NaN/Inf stops with an error, or is left out with a warning.")
@click.option("--keep-optimizer", is_flag=True, help="Keep the newest checkpoint's last_optimizer_state.")
@click.option("--drop", multiple=True, metavar="ENTRY",
              help="Leave this entry of the newest checkpoint out, as a dotted path (repeatable), "
                   "e.g. --drop extra_state.ema.")
@click.option("--trust-pickle", is_flag=True,
              help="Fully unpickle files that torch.load(weights_only=True) refuses. "
                   "ONLY for files you trust: a crafted checkpoint runs code.")
@click.option("--force", is_flag=True, help="Allow --out to be one of the inputs (it is replaced atomically).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no summary.")
def average(checkpoints, out, last, weights, alpha, sort, key, nonfinite, keep_optimizer, drop, trust_pickle,
            force, quiet) -> None:
    """Average saved checkpoints CHECKPOINTS... (oldest first) into one file (offline LAWA)."""
    from tqdm import tqdm

    from lawa_optim.io import CheckpointError
    from lawa_optim.offline import write_average

    total = min(last, len(checkpoints)) if last else len(checkpoints)
    with tqdm(total=total, desc="averaging", unit="ckpt", disable=True if quiet else None, leave=False) as bar:
        try:
            summary = write_average(
                list(checkpoints), out, last=last, weights=weights, alpha=alpha, force=force, sort=sort,
                key=key, trust_pickle=trust_pickle, keep_optimizer=keep_optimizer, drop=list(drop),
                nonfinite=nonfinite,
                progress=lambda i, path: bar.update(1),
            )
        except CheckpointError as err:
            msg = str(err).replace("trust_pickle=True (--trust-pickle on the command line)", "--trust-pickle")
            raise click.ClickException(msg.replace("nonfinite='skip' (--nonfinite skip)", "--nonfinite skip")) from err
        except (ValueError, TypeError) as err:
            msg = str(err).replace("Invalid last:", "Invalid --last:").replace("Invalid out:", "Invalid --out:")
            msg = msg.replace("Invalid drop:", "Invalid --drop:")
            raise click.UsageError(msg.replace("force=True", "--force")) from err
    if quiet:
        return
    kind = "plain state dicts" if summary.key is None else f"checkpoints (state dict under {summary.key!r})"
    coeffs = ", ".join(f"{c:.4g}" for c in summary.coefficients)
    click.echo(f"Averaged {len(summary.files)} {kind}, {weights} weights (oldest first: {coeffs})")
    for path in summary.files:
        click.echo(f"  {path}")
    for path in summary.skipped:
        click.echo(f"  skipped (NaN/Inf): {path}")
    copied = f"{len(summary.copied)} {'entry' if len(summary.copied) == 1 else 'entries'}"
    click.echo(f"{len(summary.averaged)} floating tensors averaged in float64; {copied} copied from the newest"
               + (f"; dropped {', '.join(summary.dropped)}" if summary.dropped else ""))
    click.echo(f"Wrote {summary.out} ({Path(summary.out).stat().st_size / 2**20:.1f} MiB)")
