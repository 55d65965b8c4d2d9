"""``lawa bench resnet``: torchvision ResNets trained with SGD, LAWA and its comparators evaluated each epoch.

``run(cfg, out_dir)`` (:mod:`.runner`) is the benchmark; :mod:`.cli` is its click command;
configs are YAML files validated by :mod:`.config`.
"""

from .config import Config, ConfigError, load_config, parse_config

__all__ = ["Config", "ConfigError", "load_config", "parse_config", "run"]


def run(*args, **kwargs):
    """See :func:`lawa_benchmarks.resnet.runner.run` (imported lazily: it pulls in torchvision)."""
    from .runner import run as _run

    return _run(*args, **kwargs)
