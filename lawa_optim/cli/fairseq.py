"""`lawa fairseq-user-dir`: where the fairseq plugin lives, for ``fairseq-train --user-dir``."""

from __future__ import annotations

import click

__all__ = ["fairseq_user_dir"]


@click.command(
    "fairseq-user-dir",
    epilog="""\b
Examples:
  fairseq-train DATA --user-dir "$(lawa fairseq-user-dir)" --task masked_lm_lawa --lawa-k 10 ...
  fairseq-validate DATA --user-dir "$(lawa fairseq-user-dir)" --task masked_lm_lawa \\
      --path checkpoints/checkpoint_lawa.pt --batch-size 16
""",
)
def fairseq_user_dir() -> None:
    """Print the folder of the fairseq plugin, for `fairseq-train --user-dir "$(lawa fairseq-user-dir)"`.

    \b
    The plugin registers the task masked_lm_lawa (masked_lm + LAWA); its flags:
      --lawa-k 10  --lawa-period-updates 0 (0: a snapshot per epoch)
      --lawa-weights uniform|exp  --lawa-alpha 0.9
      --lawa-offload none|cpu|disk  --lawa-offload-dir DIR (with disk)
    """
    from lawa_optim.integrations.fairseq import user_dir

    click.echo(user_dir())
