"""The `lawa` command line: click groups whose commands are imported only when run.

The library's own commands (``lawa average``, ``lawa fairseq-user-dir``) live in this package;
``lawa bench ...`` and ``lawa report`` come from the benchmarks (the ``benchmarks/`` folder of
the repository, installed as ``lawa_benchmarks``). Each command is listed in ``_COMMANDS`` as
``"module:attribute"``, so ``lawa --help`` stays fast and a command's heavy imports
(torchvision, fairseq, matplotlib) happen only when that command is used.
"""

from __future__ import annotations

import importlib

import click

__all__ = ["main"]

# group name -> {command name -> "module:attribute"}
_COMMANDS: dict[str, dict[str, str]] = {
    "lawa": {
        "average": "lawa_optim.cli.average:average",
        "fairseq-user-dir": "lawa_optim.cli.fairseq:fairseq_user_dir",
        "report": "lawa_benchmarks.report:report",
    },
    "bench": {
        "resnet": "lawa_benchmarks.resnet.cli:resnet",
        "roberta": "lawa_benchmarks.roberta.cli:roberta",
        "overhead": "lawa_benchmarks.overhead.cli:overhead",
        "soak": "lawa_benchmarks.soak:soak",
        "average-cost": "lawa_benchmarks.offline_cost:average_cost",
        "suite": "lawa_benchmarks.suite.cli:suite",
        "beyond": "lawa_benchmarks.beyond:beyond",
    },
}


# What `pip install 'lawa-optim[bench]'` brings; a command missing one of these gets that advice.
_BENCH_DEPENDENCIES = ("lawa_benchmarks", "torchvision", "matplotlib", "yaml", "tqdm", "pydantic")


class LazyGroup(click.Group):
    """A click group that imports a command's module when the command is looked up."""

    def __init__(self, *args, lazy: dict[str, str] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy or {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy:
            module, attr = self.lazy[name].split(":")
            try:
                return getattr(importlib.import_module(module), attr)
            except ModuleNotFoundError as err:
                missing = (err.name or "").split(".")[0]
                if not module.startswith("lawa_benchmarks") or missing not in _BENCH_DEPENDENCIES:
                    raise
                raise click.ClickException(
                    f"`lawa {ctx.info_name} {name}` needs the benchmarks and their dependencies "
                    f"({err.name} is missing): pip install 'lawa-optim[bench]'"
                ) from err
        return super().get_command(ctx, name)


@click.group(
    cls=LazyGroup,
    lazy=_COMMANDS["lawa"],
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="""\b
Examples:
  lawa bench resnet --config configs/quick.yaml --out runs/quick
  lawa report runs/quick
  lawa average --sort --last 6 ckpts/checkpoint[0-9]*.pt --out ckpts/checkpoint_lawa.pt
  fairseq-train DATA --user-dir "$(lawa fairseq-user-dir)" --task masked_lm_lawa ...
""",
)
@click.version_option(package_name="lawa-optim")
def main() -> None:
    """lawa: tools, benchmarks and reports for LAtest Weight Averaging."""


@main.group(
    cls=LazyGroup,
    lazy=_COMMANDS["bench"],
    epilog="""\b
Examples:
  lawa bench resnet --config configs/quick.yaml --out runs/quick        # SGD vs the zoo on Fashion-MNIST
  lawa bench suite --config configs/suite.yaml --out runs/suite         # steps to target on 3 workloads
  lawa bench beyond --out runs/beyond                                   # online k and jumps to the average
  lawa bench roberta --config configs/roberta_small.yaml                # fairseq MLM: Adam vs LAWA
  lawa bench overhead --out runs/overhead                               # LAWA's cost, side by side
  lawa bench soak --out runs/soak                                       # a long run vs a float64 reference
  lawa bench average-cost --out runs/average_cost                       # lawa average vs reading the files
""",
)
def bench() -> None:
    """Run a benchmark: `resnet` (image classification), `suite` (steps to target across workloads),
    `beyond` (online k and jumps), `roberta` (fairseq MLM), `overhead` (cost), `soak` (long-run
    exactness), `average-cost` (offline averaging against reading the files)."""
