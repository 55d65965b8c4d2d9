"""The click command ``lawa bench overhead``: parses options and calls :func:`~lawa_benchmarks.overhead.run.run`."""

from __future__ import annotations

from pathlib import Path

import click

__all__ = ["overhead", "overhead_per_rank"]

_EPILOG = """\b
Examples:
  lawa bench overhead --out runs/overhead
  lawa bench overhead --sizes 1e5,1e6 --repeats 5 --no-models --out runs/overhead-quick
  lawa bench overhead --device cuda --sizes 1e6,1e7,1e8 --epoch-model resnet50 --image-size 224 --out runs/gpu
"""


def _int_list(text: str, param: str, minimum: int) -> tuple[int, ...]:
    try:
        values = tuple(int(float(v)) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or any(v < minimum for v in values):
        raise click.BadParameter(
            f"{text!r}: give a comma-separated list of integers >= {minimum} (1e6 notation is fine)", param_hint=param
        )
    return values


@click.command("overhead", epilog=_EPILOG)
@click.option("--sizes", default="1e5,1e6,1e7,1e8", show_default=True, help="Parameter counts, comma-separated.")
@click.option("--k", "ks", default="2,6,16", show_default=True,
              help="Ring sizes: the middle one for the main figures, largest vs smallest for k-independence.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="Where the tensors and models live.")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default="float32", show_default=True,
              help="The parameters' dtype in the per-size figures (the models train in float32).")
@click.option("--repeats", type=click.IntRange(min=1), default=11, show_default=True,
              help="Interleaved pairs per figure (sizes >= 3e7 use --large-repeats).")
@click.option("--large-repeats", type=click.IntRange(min=1), default=3, show_default=True,
              help="Interleaved pairs per figure for sizes >= 3e7.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="torch intra-op threads on the CPU (1: the clock is the thread's CPU time).")
@click.option("--max-gib", type=click.FloatRange(min=0, min_open=True), default=6.0, show_default=True,
              help="Skip figures whose tensors need more memory than this.")
@click.option("--models/--no-models", default=True, show_default=True,
              help="Also measure step() (tiny MLP, ResNet-18) and a whole epoch.")
@click.option("--epoch-model", default="resnet18", show_default=True, help="torchvision model of the epoch figure.")
@click.option("--epoch-batches", type=click.IntRange(min=1), default=16, show_default=True,
              help="Batches of the synthetic epoch (random images, a snapshot at its end).")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True,
              help="Images per batch of the synthetic epoch.")
@click.option("--image-size", type=click.IntRange(min=8), default=32, show_default=True,
              help="Height and width of the synthetic epoch's images.")
@click.option("--epoch-repeats", type=click.IntRange(min=1), default=3, show_default=True,
              help="Interleaved epoch pairs (with LAWA, without) of the epoch figure.")
@click.option("--disk/--no-disk", default=True, show_default=True, help="Also measure the disk-backed ring.")
@click.option("--fused/--no-fused", default=False, show_default=True,
              help="Also measure snapshot and averaged() with fused=True (torch.compile'd kernels, CPU; "
                   "compiles once, ~13 s cold).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for overhead.json, overhead.md and overhead.png.")
@click.option("--no-progress", is_flag=True, help="No tqdm progress bar.")
def overhead(sizes: str, ks: str, device: str, dtype: str, repeats: int, large_repeats: int, threads: int,
             max_gib: float, models: bool, epoch_model: str, epoch_batches: int, batch_size: int, image_size: int,
             epoch_repeats: int, disk: bool, fused: bool, out_dir: Path, no_progress: bool) -> None:
    """Measure what LAWA costs, each figure as a ratio to a reference timed beside it.

    One snapshot and averaged() vs a plain copy of the parameters, a snapshot at the largest vs
    the smallest k, one LAWA update vs the paper's Algorithm 1 (time and temporary memory), the
    zoo's EMA vs torch's AveragedModel, the disk-backed ring, a non-snapshot step() and a whole
    epoch vs the bare optimizer. Prints a markdown table; writes JSON, the table and a PNG plot.
    """
    from .run import OverheadConfig, run

    try:
        cfg = OverheadConfig(
            out=out_dir, sizes=_int_list(sizes, "--sizes", 1000), ks=_int_list(ks, "--k", 1), device=device,
            dtype=dtype, repeats=repeats, large_repeats=large_repeats, threads=threads, max_gib=max_gib, models=models,
            epoch_model=epoch_model, epoch_batches=epoch_batches, batch_size=batch_size, image_size=image_size,
            epoch_repeats=epoch_repeats, disk=disk, fused=fused,
        )
    except ValueError as err:
        raise click.UsageError(str(err)) from err
    results = run(cfg, progress=not no_progress)
    click.echo(results["table"])
    click.echo(f"\nWrote {out_dir / 'overhead.json'}, overhead.md and overhead.png")


_PER_RANK_EPILOG = """\b
Examples:
  lawa bench overhead-per-rank --out runs/overhead-per-rank
  lawa bench overhead-per-rank --params 2e5 --worlds 1,2,3 --repeats 3 --out runs/per-rank-quick
"""


@click.command("overhead-per-rank", epilog=_PER_RANK_EPILOG)
@click.option("--params", default="4e6", show_default=True, help="Parameters of the model (1e6 notation is fine).")
@click.option("--worlds", default="1,2", show_default=True, help="World sizes (CPU processes, gloo), comma-separated.")
@click.option("--repeats", type=click.IntRange(min=1), default=7, show_default=True,
              help="Interleaved rounds per rank; the times are their medians.")
@click.option("--k", type=click.IntRange(min=1), default=4, show_default=True, help="The ring's size.")
@click.option("--layers", type=click.IntRange(min=1), default=8, show_default=True,
              help="Square Linear layers of the model, each fully_shard-ed.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for per_rank.json, per_rank.csv, per_rank.md and per_rank.png.")
@click.option("--no-progress", is_flag=True, help="No tqdm progress bar.")
def overhead_per_rank(params: str, worlds: str, repeats: int, k: int, layers: int, out_dir: Path,
                      no_progress: bool) -> None:
    """Snapshot and swap time per rank under FSDP2 at each world size, against a copy of the local shards.

    Launches the ranks itself (torch.distributed.run, gloo on CPU, one thread per rank) once per
    world size. Each rank keeps the ring of its own shards, so its time should scale with its
    shard (world 2: half of world 1's) at a constant ratio to the copy. Prints a markdown table.
    """
    from .per_rank import PerRankConfig, run

    try:
        cfg = PerRankConfig(out=out_dir, params=_int_list(params, "--params", 1)[0],
                            worlds=_int_list(worlds, "--worlds", 1), repeats=repeats, k=k, layers=layers)
    except ValueError as err:
        raise click.UsageError(str(err)) from err
    try:
        results = run(cfg, progress=not no_progress)
    except RuntimeError as err:
        raise click.ClickException(str(err)) from err
    click.echo(results["table"])
    click.echo(f"\nWrote {out_dir / 'per_rank.json'}, per_rank.csv, per_rank.md and per_rank.png")
