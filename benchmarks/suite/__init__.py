"""``lawa bench suite``: LAWA and its comparators on several small workloads, steps to a fixed target.

- :mod:`.config`: the YAML config (pydantic), one section per workload, methods as in the ResNet benchmark.
- :mod:`.workloads`: data, model, recipe and metric of each workload, one module each, found by
  their ``WORKLOADS`` (ResNet-10 and ViT on Fashion-MNIST, a GPT-2-style character LM on the
  World English Bible; ``roberta``: the RoBERTa masked LM, trained by fairseq through
  ``lawa bench roberta`` once per seed, Adam and the LAWA plugin only).
- :mod:`.runner`: the one runner (seeds, methods from the registry, evaluation every epoch,
  resumable checkpoints, metrics in the report schema), also the ResNet benchmark's.
- :mod:`.results` and :mod:`.plots`: steps to target, the table across workloads, one plot each.
"""

from .config import SuiteConfig, load_config
from .runner import run

__all__ = ["SuiteConfig", "load_config", "run"]
