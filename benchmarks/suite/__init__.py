"""``lawa bench suite``: LAWA and its comparators on several small workloads, steps to a fixed target.

- :mod:`.config`: the YAML config (pydantic), one section per workload, methods as in the ResNet benchmark.
- :mod:`.workloads`: data, model, recipe and metric of each workload (ResNet-10 and ViT on
  Fashion-MNIST, a GPT-2-style character LM on the World English Bible).
- :mod:`.runner`: the skeleton they share (seeds, methods from the registry, evaluation every
  epoch, resumable checkpoints, metrics in the report schema).
- :mod:`.roberta`: the RoBERTa masked LM, trained by fairseq through ``lawa bench roberta`` once per
  seed (Adam and the LAWA plugin only), its results put into the same schema.
- :mod:`.results` and :mod:`.plots`: steps to target, the table across workloads, one plot each.
"""

from .config import SuiteConfig, load_config
from .runner import run

__all__ = ["SuiteConfig", "load_config", "run"]
