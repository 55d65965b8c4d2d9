"""`lawa average`: offline LAWA over saved checkpoints (the click layer over lawa_optim.offline)."""

from __future__ import annotations

from pathlib import Path

import click

_EPILOG = """\b
Examples:
  # Hugging Face Trainer output: the 6 newest checkpoint-N/ folders -> a folder from_pretrained loads
  lawa average runs/out --last 6 --out runs/out-lawa6
  # Lightning: the 5 newest epoch=*.ckpt (last.ckpt is left out) -> a .ckpt load_from_checkpoint loads
  lawa average lightning_logs/version_0/checkpoints --last 5 --out lawa.ckpt
  # timm: average the EMA weights of the CheckpointSaver's files instead of the raw ones
  lawa average output/train/run1 --last 4 --key state_dict_ema --out lawa.pth.tar
  # fairseq epoch checkpoints, loadable by fairseq-validate
  lawa average --last 6 checkpoints/checkpoint[0-9]*.pt --out checkpoints/checkpoint_lawa.pt
  # plain PyTorch state dicts or .safetensors files, EXP weights (newest weighted most)
  lawa average ep18.pt ep19.pt ep20.pt --weights exp --alpha 0.9 --out ep20_exp.pt

\b
CHECKPOINTS are files or folders; a folder of checkpoints gives its entries whose name holds a
number, and all are put in natural order (checkpoint-500 before checkpoint-1000) unless
--as-given. The output has the inputs' format. Floating tensors are averaged in float64 and
cast back to their stored dtype; integer and bool buffers (num_batches_tracked) and other
entries are copied from the newest checkpoint, without optimizer or trainer state.
safetensors are read and written in 1 MiB pieces (a few MiB of memory whatever the model).
The output appears atomically: a crash leaves the old file (or no folder).
"""


@click.command(epilog=_EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument(
    "checkpoints", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path)
)
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path),
              help="File (or, for Hugging Face folders, a new folder) to write the average to; never one of the "
                   "inputs, unless --force.")
@click.option("--last", "-k", type=click.IntRange(min=1), default=None,
              help="Average only the K newest checkpoints (default: all given).")
@click.option("--weights", type=click.Choice(["uniform", "exp", "linear", "cosine", "1-sqrt"]), default="uniform",
              show_default=True,
              help="uniform: LAWA's plain mean; exp: the paper's EXP, the newest weighted most; linear, cosine, "
                   "1-sqrt: the merge that emulates that learning-rate decay over the checkpoints (WSM; linear is "
                   "the uniform mean).")
@click.option("--alpha", type=click.FloatRange(0.0, 1.0, min_open=True), default=0.9, show_default=True,
              help="EXP's decay: coefficient alpha*(1-alpha)^age, normalized.")
@click.option("--sort/--as-given", "sort", default=True, show_default=True,
              help="Order the checkpoints naturally (checkpoint-500 before checkpoint-1000), or keep the order given "
                   "(oldest first).")
@click.option("--key", default=None,
              help="Entry holding the weights to average where a checkpoint has several: Lightning state_dict | "
                   "current_model_state (default: current_model_state when present, the raw weights under "
                   "WeightAveraging), timm state_dict (default) | state_dict_ema, or any entry of a checkpoint dict.")
@click.option("--nonfinite", type=click.Choice(["raise", "skip"]), default="raise", show_default=True,
              help="A checkpoint holding NaN/Inf stops with an error, or is left out with a warning.")
@click.option("--keep-optimizer", is_flag=True, help="Keep the newest checkpoint's optimizer and scheduler state.")
@click.option("--drop", multiple=True, metavar="ENTRY",
              help="Leave this entry of the newest checkpoint out, as a dotted path (repeatable), "
                   "e.g. --drop extra_state.ema.")
@click.option("--trust-pickle", is_flag=True,
              help="Fully unpickle files that torch.load(weights_only=True) refuses. "
                   "ONLY for files you trust: a crafted checkpoint runs code.")
@click.option("--force", is_flag=True,
              help="Allow --out to be one of the inputs or an existing folder (it is replaced atomically).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no summary.")
def average(checkpoints, out, last, weights, alpha, sort, key, nonfinite, keep_optimizer, drop, trust_pickle,
            force, quiet) -> None:
    """Average saved checkpoints CHECKPOINTS... (files or folders) into one, in their format (offline LAWA)."""
    from tqdm import tqdm

    from lawa_optim.io import CheckpointError
    from lawa_optim.offline import write_average

    with tqdm(desc="averaging", unit="step", disable=True if quiet else None, leave=False) as bar:
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
            msg = msg.replace("Invalid drop:", "Invalid --drop:").replace("Invalid key:", "Invalid --key:")
            raise click.UsageError(msg.replace("force=True", "--force")) from err
    if quiet:
        return
    coeffs = ", ".join(f"{c:.4g}" for c in summary.coefficients)
    click.echo(f"Averaged {len(summary.files)} {_kind(summary)}, {weights} weights (oldest first: {coeffs})")
    for path in summary.files:
        click.echo(f"  {path}")
    for path in summary.skipped:
        click.echo(f"  skipped (NaN/Inf): {path}")
    for path in summary.ignored:
        click.echo(f"  left out (no step number in the name, or an earlier average): {path}")
    copied = f"{len(summary.copied)} {'entry' if len(summary.copied) == 1 else 'entries'}"
    click.echo(f"{len(summary.averaged)} floating tensors averaged in float64; {copied} copied from the newest"
               + (f"; dropped {', '.join(summary.dropped)}" if summary.dropped else ""))
    written = Path(summary.out)
    size = sum(p.stat().st_size for p in written.iterdir()) if written.is_dir() else written.stat().st_size
    click.echo(f"Wrote {summary.out} ({size / 2**20:.1f} MiB)")


_ENTRY_NOTE = {
    ("lightning", "current_model_state"): "the raw weights; --key state_dict for WeightAveraging's average",
    ("lightning", "state_dict"): "written as state_dict",
    ("timm", "state_dict"): "the raw weights; --key state_dict_ema for the EMA",
    ("timm", "state_dict_ema"): "written as state_dict",
}


def _kind(summary) -> str:
    """``Lightning checkpoints (weights from 'current_model_state': the raw weights; ...)``."""
    if summary.format == "huggingface":
        return "Hugging Face checkpoints"
    if summary.format == "safetensors":
        return "safetensors files"
    if summary.key is None:
        return "plain state dicts"
    note = _ENTRY_NOTE.get((summary.format, summary.key))
    name = {"lightning": "Lightning", "timm": "timm", "fairseq": "fairseq"}.get(summary.format, "")
    return f"{name + ' ' if name else ''}checkpoints (weights from {summary.key!r}{': ' + note if note else ''})"
