"""`lawa average`: offline LAWA over saved checkpoints (the click layer over lawa_optim.offline)."""

from __future__ import annotations

from pathlib import Path

import click

_EPILOG = """\b
Examples:
  # Hugging Face Trainer output: the 6 newest checkpoint-N/ folders -> a folder from_pretrained loads
  lawa average runs/out --last 6 --out runs/out-lawa6
  # Lightning: the 5 newest epoch=*.ckpt (last.ckpt, best-*.ckpt copies left out) -> a .ckpt load_from_checkpoint loads
  lawa average lightning_logs/version_0/checkpoints --last 5 --out lawa.ckpt
  # distributed checkpoints (dcp.save, FSDP2, Lightning ModelParallelStrategy): step-N/ folders -> a DCP folder
  lawa average checkpoints/ --last 4 --out checkpoints-lawa4
  # timm: average the EMA weights of the CheckpointSaver's files instead of the raw ones
  lawa average output/train/run1 --last 4 --key state_dict_ema --out lawa.pth.tar
  # fairseq epoch checkpoints, loadable by fairseq-validate
  lawa average --last 6 checkpoints/checkpoint[0-9]*.pt --out checkpoints/checkpoint_lawa.pt
  # plain PyTorch state dicts or .safetensors files, EXP weights (newest weighted most)
  lawa average ep18.pt ep19.pt ep20.pt --weights exp --alpha 0.9 --out ep20_exp.pt

\b
CHECKPOINTS are files or folders; a folder of checkpoints gives its entries whose name holds a
number, and all are put in natural order (checkpoint-500 before checkpoint-1000) unless
--as-given. The output has the inputs' format (distributed checkpoint folders: see
--out-format). Floating tensors are averaged in float64 and
cast back to their stored dtype; integer and bool buffers (num_batches_tracked) and other
entries are copied from the newest checkpoint, without optimizer, trainer or callback state.
safetensors are read and written in pieces (a few MiB of memory whatever the model);
distributed checkpoints one tensor at a time.
The output appears atomically: a crash leaves the old file (or no folder).
"""


@click.command(epilog=_EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument(
    "checkpoints", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path)
)
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path),
              help="File (or, for Hugging Face and distributed checkpoint folders, a new folder; see --out-format) "
                   "to write the average to; never one of the inputs, unless --force.")
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
@click.option("--out-format", type=click.Choice(["dcp", "safetensors", "huggingface"]), default=None,
              help="Distributed checkpoint folders only: write a DCP folder (default), a .safetensors file, or a "
                   "folder holding model.safetensors (for inference).")
@click.option("--keep-optimizer", is_flag=True, help="Keep the newest checkpoint's optimizer and scheduler state.")
@click.option("--keep-callbacks", is_flag=True,
              help="Keep the newest Lightning checkpoint's callback states (LAWACallback's ring, EMA/SWA) and "
                   "LAWACallback's lawa_state_dict, left out by default (stale in an average).")
@click.option("--include-copies", is_flag=True,
              help="Also average a folder's best*/last* files (Lightning ModelCheckpoint's copies of an epoch's "
                   "checkpoint), left out by default.")
@click.option("--drop", multiple=True, metavar="ENTRY",
              help="Leave this entry of the newest checkpoint out, as a dotted path (repeatable), "
                   "e.g. --drop extra_state.ema.")
@click.option("--trust-pickle", is_flag=True,
              help="Fully unpickle files that torch.load(weights_only=True) refuses. "
                   "ONLY for files you trust: a crafted checkpoint runs code.")
@click.option("--force", is_flag=True,
              help="Allow --out to exist already or to be one of the inputs (it is replaced atomically).")
@click.option("--threads", "-j", type=click.IntRange(min=1), default=None,
              help="CPU threads for the sums (default: every core this process may use).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no summary.")
def average(checkpoints, out, quiet, threads, **options) -> None:
    """Average saved checkpoints CHECKPOINTS... (files or folders) into one, in their format (offline LAWA)."""
    import contextlib
    import os

    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(threads or cores)

    from lawa_optim.io import CheckpointError
    from lawa_optim.offline import AverageOptions, write_average

    if quiet:  # no bar: tqdm is not even imported
        bar_context = contextlib.nullcontext()
    else:
        from tqdm import tqdm

        bar_context = tqdm(desc="averaging", unit="step", disable=None, leave=False)
    with bar_context as bar:
        try:
            opts = AverageOptions(**options, progress=None if bar is None else lambda i, path: bar.update(1))
            summary = write_average(list(checkpoints), out, opts)
        except CheckpointError as err:
            raise click.ClickException(_as_options(str(err))) from err
        except (ValueError, TypeError) as err:
            raise click.UsageError(_as_options(str(err))) from err
    if quiet:
        return
    coeffs = ", ".join(f"{c:.4g}" for c in summary.coefficients)
    click.echo(f"Averaged {len(summary.files)} {summary.description}, {opts.weights} weights (oldest first: {coeffs})")
    for path in summary.files:
        click.echo(f"  {path}")
    for path in summary.skipped:
        click.echo(f"  skipped (NaN/Inf): {path}")
    for path in summary.ignored:
        click.echo(f"  left out (no step number in the name, an earlier average, or an interrupted save's staging "
                   f"folder): {path}")
    for path in summary.copies:
        click.echo(f"  left out (a best/last copy of an epoch checkpoint; --include-copies averages it): {path}")
    copied = f"{len(summary.copied)} {'entry' if len(summary.copied) == 1 else 'entries'}"
    click.echo(f"{len(summary.averaged)} floating tensors averaged in float64; {copied} copied from the newest"
               + (f"; dropped {', '.join(summary.dropped)}" if summary.dropped else ""))
    written = Path(summary.out)
    size = sum(p.stat().st_size for p in written.rglob("*") if p.is_file()) if written.is_dir() \
        else written.stat().st_size
    click.echo(f"Wrote {summary.out} ({size / 2**20:.1f} MiB)")


def _as_options(msg: str) -> str:
    """The library's message in the command line's words: ``Invalid last:`` -> ``Invalid --last:``, ``force=True`` ->
    ``--force``."""
    import dataclasses

    from lawa_optim.offline import AverageOptions

    msg = msg.replace("trust_pickle=True (--trust-pickle on the command line)", "--trust-pickle")
    msg = msg.replace("nonfinite='skip' (--nonfinite skip)", "--nonfinite skip")
    msg = msg.replace("include_copies=True (--include-copies)", "--include-copies")
    for name in ["out"] + [f.name for f in dataclasses.fields(AverageOptions)]:
        flag = "--" + name.replace("_", "-")
        msg = msg.replace(f"Invalid {name}:", f"Invalid {flag}:").replace(f"{name}=True", flag)
    return msg
