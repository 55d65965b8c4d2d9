"""The `lawa` command line: click groups whose commands are imported only when run.

Each command lives in its runner's module and is listed in ``_COMMANDS`` as
``"module:attribute"``, so ``lawa --help`` stays fast and a runner's heavy imports
(torchvision, fairseq, matplotlib) happen only when that runner is used.
"""

from __future__ import annotations

import importlib

import click

# group name -> {command name -> "module:attribute"}
_COMMANDS: dict[str, dict[str, str]] = {
    "lawa": {
        "report": "benchmarks.report:report",
        "average": "benchmarks.average_cli:average",
        "fairseq-user-dir": "benchmarks.roberta.cli:fairseq_user_dir",
    },
    "bench": {
        "resnet": "benchmarks.resnet.cli:resnet",
        "roberta": "benchmarks.roberta.cli:roberta",
        "overhead": "benchmarks.overhead.cli:overhead",
        "soak": "benchmarks.soak:soak",
    },
}


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
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, name)


@click.group(cls=LazyGroup, lazy=_COMMANDS["lawa"], context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lawa-optim")
def main() -> None:
    """lawa: benchmarks, reports and tools for LAtest Weight Averaging.

    \b
    Examples:
      lawa bench resnet --config configs/quick.yaml --out runs/quick
      lawa report runs/quick
      lawa average ckpt_10.pt ckpt_11.pt ckpt_12.pt --out checkpoint_lawa.pt
    """


@main.group(cls=LazyGroup, lazy=_COMMANDS["bench"])
def bench() -> None:
    """Run a benchmark: `resnet` (image classification), `roberta` (fairseq MLM), `overhead` (cost)."""


if __name__ == "__main__":
    main()
