"""`lawa bench roberta` and `lawa fairseq-user-dir` through click's CliRunner (no training here)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.cli
click_testing = pytest.importorskip("click.testing")

from lawa_benchmarks.roberta.config import load_config  # noqa: E402
from lawa_benchmarks.roberta.runner import fairseq_train_command, updates_plan  # noqa: E402
from lawa_optim.cli import main  # noqa: E402

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def invoke(*args):
    return click_testing.CliRunner().invoke(main, list(args))


def test_fairseq_user_dir_prints_the_plugin_folder():
    result = invoke("fairseq-user-dir")
    assert result.exit_code == 0, result.output
    folder = Path(result.output.strip())
    assert folder.name == "lawa_fairseq" and (folder / "__init__.py").is_file()
    assert "lawa_optim.integrations.fairseq import task" in (folder / "__init__.py").read_text()


def test_missing_config_is_a_usage_error(tmp_path):
    result = invoke("bench", "roberta", "--config", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "o"))
    assert result.exit_code == 2 and "does not exist" in result.output
    assert not (tmp_path / "o").exists()


def test_bad_config_names_every_problem(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nlawa: {k: 0}\ntrain: {lr: -1}\n")
    result = invoke("bench", "roberta", "--config", str(bad), "--out", str(tmp_path / "o"))
    assert result.exit_code == 2 and "lawa.k" in result.output and "train.lr" in result.output


def test_wikitext_folder_must_exist(tmp_path):
    result = invoke("bench", "roberta", "--config", str(CONFIGS / "roberta_base_wikitext103.yaml"),
                    "--wikitext", str(tmp_path / "missing"), "--out", str(tmp_path / "o"))
    assert result.exit_code == 2 and "--wikitext" in result.output and "nothing is downloaded" in result.output
    assert not (tmp_path / "o").exists()


def test_fairseq_train_command_of_the_small_config(tmp_path):
    cfg = load_config(CONFIGS / "roberta_small.yaml")
    plan = updates_plan(cfg, 45)
    cmd = fairseq_train_command(cfg, tmp_path / "data-bin", tmp_path / "ckpt", plan)
    flags = dict(zip(cmd, cmd[1:]))
    assert flags["--task"] == "masked_lm_lawa" and flags["--lawa-k"] == str(cfg.lawa.k)
    assert Path(flags["--user-dir"]).name == "lawa_fairseq"
    assert flags["--warmup-updates"] == str(round(0.1 * 45 * cfg.train.epochs))
    assert flags["--total-num-update"] == str(6 * 45 * cfg.train.epochs)
    assert flags["--encoder-layers"] == "2" and flags["--max-epoch"] == str(cfg.train.epochs) and "--cpu" in cmd
    assert flags["--adam-betas"] == "(0.9,0.98)" and flags["--update-freq"] == "1"


def test_base_config_command_is_the_papers_batch(tmp_path):
    cfg = load_config(CONFIGS / "roberta_base_wikitext103.yaml")
    cmd = fairseq_train_command(cfg, tmp_path, tmp_path, updates_plan(cfg, 100))
    flags = dict(zip(cmd, cmd[1:]))
    # 16 sequences per GPU x 4 GPUs x update-freq 32 = 2048 sequences of 512 tokens per update
    assert (flags["--batch-size"], flags["--update-freq"], flags["--distributed-world-size"]) == ("16", "32", "4")
    assert (flags["--tokens-per-sample"], flags["--warmup-updates"], flags["--total-num-update"]) == ("512", "10000",
                                                                                                   "125000")
    assert "--fp16" in cmd and "--cpu" not in cmd and flags["--lawa-k"] == "10"


def test_plugin_folder_lookup_does_not_import_fairseq():
    """`lawa fairseq-user-dir` and `import lawa_optim.integrations.fairseq` stay light: fairseq loads in fairseq."""
    import subprocess
    import sys

    code = ("import sys, lawa_optim, lawa_optim.integrations.fairseq as f; f.user_dir(); "
            "import lawa_benchmarks.roberta.cli; "
            "assert 'fairseq' not in sys.modules and 'matplotlib' not in sys.modules")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parent.parent)
    assert proc.returncode == 0, proc.stderr[-2000:]


# ------------------------------------------------------------------------------ a rerun in the same folder
def _cfg(**train):
    from lawa_benchmarks.roberta.config import parse_config

    return parse_config({"name": "t", "train": {"epochs": 2, **train}}, where="test")


def test_rerun_with_another_config_is_refused_before_anything_is_written(tmp_path):
    """No fairseq needed: the check runs before the data stages."""
    from click.testing import CliRunner

    from lawa_benchmarks.roberta.runner import RUN_CONFIG, ResumeError, _record_config, check_resume
    from lawa_optim.cli import main

    out = tmp_path / "run"
    out.mkdir()
    _record_config(_cfg(lr=1e-3), out, {"warmup_updates": 3, "total_num_update": 60, "updates_per_epoch": 10})
    assert check_resume(_cfg(lr=1e-3, epochs=5, threads=1), out)["epochs"] == 2  # epochs and threads may change
    with pytest.raises(ResumeError, match=r"another config \(train.lr: 0.001 -> 0.002\); use another --out, or"):
        check_resume(_cfg(lr=2e-3), out)
    config = tmp_path / "t.yaml"
    config.write_text("name: t\ntrain: {epochs: 2, lr: 2.0e-3}\n")
    before = sorted(p.name for p in out.iterdir())
    res = CliRunner().invoke(main, ["bench", "roberta", "--config", str(config), "--out", str(out)])
    assert res.exit_code == 2 and "train.lr: 0.001 -> 0.002" in res.output and "--fresh" in res.output
    assert sorted(p.name for p in out.iterdir()) == before == [RUN_CONFIG]


def test_more_epochs_refused_when_percentages_move_the_schedule(tmp_path):
    from lawa_benchmarks.roberta.runner import ResumeError, _record_config, check_resume, updates_plan

    pct = _cfg(warmup_updates="10%", total_num_update="100%")
    _record_config(pct, tmp_path, updates_plan(pct, 10))
    longer = _cfg(epochs=4, warmup_updates="10%", total_num_update="100%")
    with pytest.raises(ResumeError, match=r"train.epochs 2 -> 4 changes the learning-rate schedule .*"
                                          r"warmup_updates 2 -> 4, total_num_update 20 -> 40"):
        check_resume(longer, tmp_path, updates_plan(longer, 10))
    counts = _cfg(warmup_updates=5, total_num_update=100)
    _record_config(counts, tmp_path, updates_plan(counts, 10))
    longer = _cfg(epochs=4, warmup_updates=5, total_num_update=100)
    assert check_resume(longer, tmp_path, updates_plan(longer, 10))["epochs"] == 2  # the same schedule: continues
