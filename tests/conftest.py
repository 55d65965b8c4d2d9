"""Shared fixtures, and the rule for optional dependencies.

Markers (see pyproject.toml): ``slow``, ``distributed``, ``fairseq``, ``cli``. CI runs them all.
A test that needs an optional dependency calls :func:`require`: outside CI a missing one skips
the test; with ``CI`` set it fails, so CI can never go green by skipping.
"""

from __future__ import annotations

import importlib
import os

import pytest
import torch

IN_CI = os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def require(module: str, why: str = ""):
    """Import ``module`` or skip (fail under CI) with the install hint."""
    try:
        return importlib.import_module(module)
    except Exception as err:  # ImportError, or a broken install raising something else
        msg = f"{module} is needed{': ' + why if why else ''} ({err}); `make test` installs it"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture
def one_thread():
    """Run the test on one intra-op thread (small tensors: threads only add noise), then restore."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Folders frameworks write into the working directory when a test forgets to give them tmp_path.
_STRAY = ("checkpoints", "lightning_logs", "trainer_output", "wandb", "mlruns")


@pytest.fixture(autouse=True)
def _no_files_left_in_the_checkout():
    """Fail the test that leaves a framework's default output folder in the repository root."""
    before = {name for name in _STRAY if os.path.exists(os.path.join(_ROOT, name))}
    yield
    after = {name for name in _STRAY if os.path.exists(os.path.join(_ROOT, name))}
    if after - before:
        pytest.fail(f"the test wrote {sorted(after - before)} into {_ROOT}: give the framework tmp_path "
                    "(default_root_dir=, output_dir=, dirpath=)")
