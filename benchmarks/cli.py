"""``lawa bench``: the benchmarks' command group, registered with the ``lawa`` command line.

``pyproject.toml`` registers it (and ``lawa report``) in the entry-point group ``lawa.commands``
that :mod:`lawa_optim.cli` reads, so the library never names the benchmarks. Each benchmark is
imported when it is looked up; one whose dependencies are missing says which and how to get them.
"""

from __future__ import annotations

import click

from lawa_optim.cli import LazyGroup, name_missing_packages

from .report import report as _report

__all__ = ["BENCHMARKS", "BENCH_REQUIRES", "INSTALL_HINT", "bench", "report"]

INSTALL_HINT = "pip install 'lawa-optim[bench]'"
# the top-level modules the bench extra installs (pyproject.toml), which the benchmarks import
BENCH_REQUIRES = ("torchvision", "matplotlib", "yaml", "pydantic", "torch_optimizer", "schedulefree")

# command name -> "module:attribute" of its click command
BENCHMARKS: dict[str, str] = {
    "resnet": "lawa_benchmarks.resnet.cli:resnet",
    "suite": "lawa_benchmarks.suite.cli:suite",
    "beyond": "lawa_benchmarks.beyond:beyond",
    "pretrain": "lawa_benchmarks.pretrain:pretrain",
    "roberta": "lawa_benchmarks.roberta.cli:roberta",
    "overhead": "lawa_benchmarks.overhead.cli:overhead",
    "overhead-per-rank": "lawa_benchmarks.overhead.cli:overhead_per_rank",
    "soak": "lawa_benchmarks.soak:soak",
    "average-cost": "lawa_benchmarks.offline_cost:average_cost",
}


@click.group(
    cls=LazyGroup,
    lazy=BENCHMARKS,
    install_hint=INSTALL_HINT,
    requires=BENCH_REQUIRES,
    epilog="""\b
Examples:
  lawa bench resnet --config quick --out runs/quick          # SGD vs the zoo on Fashion-MNIST (make demo)
  lawa bench suite --config suite --out runs/suite           # steps to target on 4 workloads
  lawa bench suite --quick --out runs/suite_quick            # the same, shortened: minutes
  lawa bench beyond --out runs/beyond                        # online k and jumps to the average
  lawa bench pretrain --config pretrain --out runs/pretrain  # constant LR + merges vs cosine and WSD
  lawa bench roberta --config roberta_small                  # fairseq MLM: Adam vs LAWA
  lawa bench overhead --out runs/overhead                    # LAWA's cost, side by side
  lawa bench overhead-per-rank --out runs/per_rank           # FSDP2: time per rank vs the local shard
  lawa bench soak --out runs/soak                            # a long run vs a float64 reference
  lawa bench average-cost --out runs/average_cost            # lawa average vs reading the files

\b
--config takes a file or the name of a shipped config: quick, repro, suite, pretrain,
roberta_small, roberta_base_wikitext103, resnet34_cifar100, resnet50_imagenet
(configs/NAME.yaml in a clone of the repository).
""",
)
def bench() -> None:
    """Run a benchmark: `resnet` (image classification), `suite` (steps to target across workloads),
    `beyond` (online k and jumps), `pretrain` (constant LR and merges), `roberta` (fairseq MLM),
    `overhead` (cost), `overhead-per-rank` (cost per rank under FSDP2), `soak` (long-run exactness),
    `average-cost` (offline averaging against reading the files)."""


# `lawa report` (registered in pyproject.toml): its plots import matplotlib when it runs
report = name_missing_packages(_report, INSTALL_HINT, BENCH_REQUIRES)
