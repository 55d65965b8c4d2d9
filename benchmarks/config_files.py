"""Where the benchmarks' YAML configs are: a file given by path, or a config shipped with the package.

The configs ship inside the package (``lawa_benchmarks/configs/*.yaml``; in a clone of the
repository they are its top-level ``configs/`` folder), so ``--config quick`` works wherever the
package is installed and the documented ``--config configs/quick.yaml`` works outside a clone too.
Only the standard library is imported here (the configs are found without the ``bench`` extra).

Example:
    >>> resolve_config("quick")               # the shipped configs/quick.yaml
    >>> resolve_config("configs/suite.yaml")  # the clone's file in a clone, else the shipped one
    >>> resolve_config("my.yaml")             # any file of yours
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["config_names", "resolve_config", "shipped_configs"]


def shipped_configs() -> Path:
    """The folder of the shipped configs: ``lawa_benchmarks/configs`` in an installed wheel, the
    repository's ``configs/`` in a clone (an editable install)."""
    here = Path(__file__).resolve().parent
    for folder in (here / "configs", here.parent / "configs"):
        if folder.is_dir():
            return folder
    return here / "configs"


def config_names() -> list[str]:
    """The names of the shipped configs (``quick``, ``suite``, ...), each usable as ``--config NAME``."""
    return sorted(p.stem for p in shipped_configs().glob("*.yaml"))


def resolve_config(path: str | Path) -> Path:
    """The config file ``path`` names: the file itself when it exists, else a shipped config.

    A shipped config is found by its name (``quick``, ``quick.yaml``) or by its path in a clone
    (``configs/quick.yaml``), so the documented commands also work outside a clone.

    Raises:
        FileNotFoundError: when ``path`` is no file and names no shipped config (the shipped ones listed).
    """
    path = Path(path)
    if path.is_file():
        return path
    if path.parent in (Path("."), Path("configs")) and path.suffix in ("", ".yaml"):
        shipped = shipped_configs() / f"{path.stem}.yaml"
        if shipped.is_file():
            return shipped
    raise FileNotFoundError(f"config file {str(path)!r} does not exist; give a YAML file or the name of a shipped "
                            f"config: {', '.join(config_names())}")
