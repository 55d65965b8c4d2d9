"""Integrations with training frameworks.

Each subpackage is the only place that imports its framework, and it does so lazily, so
``import lawa_optim`` never pulls one in:

- :mod:`lawa_optim.integrations.fairseq`: LAWA for ``fairseq-train`` as a ``--user-dir`` plugin.
- :mod:`lawa_optim.integrations.lightning`: ``LAWACallback`` for PyTorch Lightning's ``Trainer``.
- :mod:`lawa_optim.integrations.observer`: the shim under the callbacks (``Observer``, ``TimeSaved``);
  imports no framework.
- :mod:`lawa_optim.integrations.transformers`: ``LAWATrainerCallback`` for the Hugging Face ``Trainer``.
"""
