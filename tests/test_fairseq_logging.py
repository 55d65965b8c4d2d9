"""Using fairseq as a library leaves the root logger alone (``import fairseq`` sets it to DEBUG).

fairseq's ``wav2vec2_classification.py`` calls ``logging.basicConfig(level=logging.DEBUG)`` when
``import fairseq`` imports its models; `lawa bench suite` then printed 2,343
``DEBUG:matplotlib.font_manager`` lines on stderr. Each check runs in a fresh process, whose root
logger is unconfigured, as a command's is.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from conftest import require

pytestmark = pytest.mark.fairseq

REPORT = "import logging; r = logging.getLogger(); print(logging.getLevelName(r.level), len(r.handlers))"


def _root_after(code: str, tmp_path) -> str:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code) + "\n" + REPORT], capture_output=True,
                         text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    return out.stdout.split("\n")[-2]


def test_importing_fairseq_alone_sets_the_root_logger_to_debug(tmp_path):
    require("fairseq")
    assert _root_after("import fairseq", tmp_path) == "DEBUG 1"  # what the fix below undoes


def test_the_fairseq_data_helper_keeps_the_root_logger_as_it_was(tmp_path):
    require("fairseq")
    code = """
        from lawa_optim.integrations.fairseq.data import masked_lm_updates_per_epoch
        try:
            masked_lm_updates_per_epoch("no-such-folder", tokens_per_sample=64, batch_size=8)
        except FileNotFoundError:
            pass
        import sys
        assert "fairseq.models" in sys.modules
    """
    assert _root_after(code, tmp_path) == "WARNING 0"
