"""Offline LAWA over real Hugging Face Trainer checkpoints (safetensors, sharded or not, and pytorch_model.bin).

A tiny GPT-2 built from a config (nothing downloaded) is trained by a real ``transformers.Trainer``
that saves ``checkpoint-N/`` folders; the average of the newest is compared with a float64
reference computed here from the files (read by safetensors' own ``load_file``), and the output
folder is loaded back with ``AutoModelForCausalLM.from_pretrained`` and ``AutoTokenizer``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import require

from lawa_optim.io import CheckpointError
from lawa_optim.offline import write_average

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning", "ignore::DeprecationWarning")


def _tokenizer():
    tokenizers = require("tokenizers", "to build a tokenizer without downloading one")
    transformers = require("transformers")
    vocab = {f"w{i}": i for i in range(30)}
    vocab["[UNK]"] = 30
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[UNK]")


@pytest.fixture(scope="module")
def trainer_run(tmp_path_factory) -> Path:
    """A real Trainer run of a tiny GPT-2 saving checkpoint-2 ... checkpoint-12 (safetensors, one file each)."""
    transformers = require("transformers", "to write real Trainer checkpoints")
    require("accelerate", "the Trainer needs it")
    out = tmp_path_factory.mktemp("hf") / "run"
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=31, n_positions=16, n_embd=16, n_layer=2, n_head=2)
    model = transformers.GPT2LMHeadModel(config)
    g = torch.Generator().manual_seed(1)
    data = [{"input_ids": ids, "labels": ids} for ids in torch.randint(0, 31, (48, 8), generator=g)]
    args = transformers.TrainingArguments(
        output_dir=str(out), max_steps=12, save_steps=2, per_device_train_batch_size=4, learning_rate=0.05,
        report_to=[], use_cpu=True, logging_strategy="no", save_strategy="steps", dataloader_num_workers=0,
        seed=0, disable_tqdm=True,
    )
    transformers.Trainer(model=model, args=args, train_dataset=data, processing_class=_tokenizer()).train()
    return out


def _reference(folders: list[Path]) -> dict[str, torch.Tensor]:
    """The float64 mean of every floating tensor over ``folders`` (their own weight files, any sharding)."""
    from safetensors.torch import load_file

    states = []
    for folder in folders:
        sd = {}
        for file in sorted(folder.glob("*.safetensors")):
            sd.update(load_file(file))
        states.append(sd)
    return {k: (torch.stack([s[k].double() for s in states]).mean(0).to(v.dtype) if v.is_floating_point() else v)
            for k, v in states[-1].items()}


def test_trainer_folder_averages_to_a_folder_from_pretrained_loads(trainer_run, tmp_path):
    transformers = require("transformers")
    checkpoints = sorted(trainer_run.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert [p.name for p in checkpoints] == [f"checkpoint-{s}" for s in range(2, 14, 2)]
    out = tmp_path / "lawa"
    summary = write_average([trainer_run], out, last=3)
    # checkpoint-8, -10, -12 by step (a plain sort would put checkpoint-10 and -12 before checkpoint-2)
    assert summary.files == tuple(str(p) for p in checkpoints[-3:])
    assert summary.format == "huggingface" and summary.coefficients == pytest.approx([1 / 3] * 3)
    want = _reference(checkpoints[-3:])
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt"}  # the input's metadata
        assert sorted(f.keys()) == sorted(want)
        for key, value in want.items():
            assert torch.equal(f.get_tensor(key), value), key
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"} <= names
    assert not names & {"optimizer.pt", "scheduler.pt", "trainer_state.json", "training_args.bin", "rng_state.pth"}
    assert json.loads((out / "lawa_average.json").read_text())["files"] == list(summary.files)
    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    got = model.state_dict()
    for key, value in want.items():
        assert torch.equal(got[key], value), key
    assert torch.equal(got["lm_head.weight"], want["transformer.wte.weight"])  # tied again by from_pretrained
    assert transformers.AutoTokenizer.from_pretrained(out)("w3 w7")["input_ids"] == [3, 7]
    # the averaged folder beside the checkpoints is never taken for one of them
    (trainer_run / "lawa-k3").mkdir()
    for p in out.iterdir():
        shutil.copy(p, trainer_run / "lawa-k3" / p.name)
    try:
        again = write_average([trainer_run], tmp_path / "again", last=3)
        assert again.files == summary.files and str(trainer_run / "lawa-k3") in again.ignored
    finally:
        shutil.rmtree(trainer_run / "lawa-k3")


def test_sharded_checkpoints_average_into_the_same_shards(trainer_run, tmp_path):
    transformers = require("transformers")
    sharded = tmp_path / "sharded"
    for step in (8, 10, 12):  # the same weights, saved sharded by save_pretrained
        model = transformers.AutoModelForCausalLM.from_pretrained(trainer_run / f"checkpoint-{step}")
        model.save_pretrained(sharded / f"checkpoint-{step}", max_shard_size="8KB")
        shutil.copy(trainer_run / f"checkpoint-{step}" / "tokenizer.json", sharded / f"checkpoint-{step}")
    shards = sorted(p.name for p in (sharded / "checkpoint-12").glob("*.safetensors"))
    assert len(shards) >= 3 and (sharded / "checkpoint-12" / "model.safetensors.index.json").is_file()
    out = tmp_path / "lawa"
    write_average([sharded], out)
    assert sorted(p.name for p in out.glob("*.safetensors")) == shards
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert index["weight_map"] == json.loads((sharded / "checkpoint-12" / "model.safetensors.index.json")
                                             .read_text())["weight_map"]
    assert index["metadata"]["total_size"] == sum(
        v.numel() * v.element_size() for v in _reference([out]).values())
    want = _reference([trainer_run / f"checkpoint-{s}" for s in (8, 10, 12)])  # from the unsharded files
    got = transformers.AutoModelForCausalLM.from_pretrained(out).state_dict()
    for key, value in want.items():
        assert torch.equal(got[key], value), key
    assert (out / "tokenizer.json").is_file()


def test_pytorch_model_bin_folders_average_to_safetensors(trainer_run, tmp_path):
    transformers = require("transformers")
    bins = tmp_path / "bins"
    for step in (10, 12):
        model = transformers.AutoModelForCausalLM.from_pretrained(trainer_run / f"checkpoint-{step}")
        (bins / f"checkpoint-{step}").mkdir(parents=True)
        model.config.save_pretrained(bins / f"checkpoint-{step}")
        torch.save(model.state_dict(), bins / f"checkpoint-{step}" / "pytorch_model.bin")  # the older layout
    out = tmp_path / "lawa"
    summary = write_average([bins], out)
    assert summary.format == "huggingface" and len(summary.files) == 2
    assert (out / "model.safetensors").is_file() and not (out / "pytorch_model.bin").exists()
    stored = _reference([out])
    assert "transformer.wte.weight" in stored and "lm_head.weight" not in stored  # the tied copy is stored once
    want = _reference([trainer_run / f"checkpoint-{s}" for s in (10, 12)])
    got = transformers.AutoModelForCausalLM.from_pretrained(out).state_dict()
    for key, value in want.items():
        assert torch.equal(got[key], value), key


def test_sharded_pytorch_model_bin_folders_average_to_sharded_safetensors(trainer_run, tmp_path):
    """transformers 5 no longer writes .bin files: the shards and index are laid out here as transformers 4's
    save_pretrained(safe_serialization=False, max_shard_size=...) wrote them (torch.save of each shard's dict)."""
    transformers = require("transformers")
    bins = tmp_path / "bins"
    for step in (10, 12):
        folder = bins / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        model = transformers.AutoModelForCausalLM.from_pretrained(trainer_run / f"checkpoint-{step}")
        model.config.save_pretrained(folder)
        sd = model.state_dict()
        del sd["lm_head.weight"]  # tied to wte: save_pretrained left it out
        keys = list(sd)
        shards = {"pytorch_model-00001-of-00002.bin": keys[: len(keys) // 2],
                  "pytorch_model-00002-of-00002.bin": keys[len(keys) // 2:]}
        for name, part in shards.items():
            torch.save({k: sd[k] for k in part}, folder / name)
        (folder / "pytorch_model.bin.index.json").write_text(json.dumps(
            {"metadata": {"total_size": 0}, "weight_map": {k: name for name, part in shards.items() for k in part}}))
    out = tmp_path / "lawa"
    write_average([bins], out)
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["model-00001-of-00002.safetensors",
                                                                 "model-00002-of-00002.safetensors"]
    weight_map = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    assert weight_map["transformer.wte.weight"] == "model-00001-of-00002.safetensors"
    want = _reference([trainer_run / f"checkpoint-{s}" for s in (10, 12)])
    got = transformers.AutoModelForCausalLM.from_pretrained(out).state_dict()
    for key, value in want.items():
        assert torch.equal(got[key], value), key
    (bins / "checkpoint-12" / "pytorch_model-00002-of-00002.bin").unlink()
    with pytest.raises(CheckpointError, match=r"names shard 'pytorch_model-00002-of-00002\.bin', which does not"):
        write_average([bins], tmp_path / "lawa2")
    assert not (tmp_path / "lawa2").exists()


# --------------------------------------------------------------- bad input: one clear error, nothing written
def _nothing_written(tmp_path: Path, out: Path) -> None:
    assert not out.exists()
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")] == []


def test_folder_without_checkpoints(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no weights here")
    out = tmp_path / "lawa"
    with pytest.raises(CheckpointError, match=r"Folder '.*empty' holds no checkpoints: looked for Hugging Face"):
        write_average([tmp_path / "empty"], out)
    _nothing_written(tmp_path, out)


def test_mixed_architectures_are_refused_by_name(trainer_run, tmp_path):
    transformers = require("transformers")
    other = tmp_path / "run" / "checkpoint-99"
    transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=31, n_positions=16, n_embd=16, n_layer=3,
                                                         n_head=2)).save_pretrained(other)
    out = tmp_path / "lawa"
    with pytest.raises(CheckpointError, match=r"checkpoint-99 does not match .*checkpoint-12: it has extra "
                                              r"'transformer\.h\.2\..*only checkpoints of one model"):
        write_average([trainer_run / "checkpoint-12", other], out)
    _nothing_written(tmp_path, out)


def test_truncated_safetensors_is_named(trainer_run, tmp_path):
    bad = tmp_path / "run" / "checkpoint-14"
    shutil.copytree(trainer_run / "checkpoint-12", bad)
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) - 100])
    out = tmp_path / "lawa"
    with pytest.raises(CheckpointError, match=r"checkpoint-14/model\.safetensors' could not be read as safetensors; "
                                              r"it is truncated"):
        write_average([trainer_run / "checkpoint-10", trainer_run / "checkpoint-12", bad], out)
    _nothing_written(tmp_path, out)


def test_index_naming_a_missing_shard(trainer_run, tmp_path):
    transformers = require("transformers")
    folder = tmp_path / "run" / "checkpoint-12"
    transformers.AutoModelForCausalLM.from_pretrained(trainer_run / "checkpoint-12").save_pretrained(
        folder, max_shard_size="8KB")
    missing = sorted(folder.glob("model-*.safetensors"))[1]
    missing.unlink()
    out = tmp_path / "lawa"
    with pytest.raises(CheckpointError, match=rf"names shard '{missing.name}', which does not exist"):
        write_average([trainer_run / "checkpoint-10", folder], out)
    _nothing_written(tmp_path, out)


def _readme_block(marker: str) -> str:
    """The fenced python block right after the line holding ``marker`` in the README or a docs page."""
    root = Path(__file__).resolve().parents[1]
    text = "\n".join(p.read_text() for p in [root / "README.md", *sorted((root / "docs").rglob("*.md"))])
    after = text[text.index(marker):]
    return after.split("```python\n", 1)[1].split("```", 1)[0]


def test_readme_evaluation_loop_runs_on_a_real_trainer(trainer_run, tmp_path, monkeypatch, capsys):
    """The README's k = 1..K evaluation loop, as written, on a real Trainer and its run folder."""
    transformers = require("transformers")
    code = _readme_block("tests/test_offline_hf.py runs this block on a real Trainer run")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "out").symlink_to(trainer_run)
    monkeypatch.chdir(tmp_path)
    g = torch.Generator().manual_seed(2)
    evaluation = [{"input_ids": ids, "labels": ids} for ids in torch.randint(0, 31, (16, 8), generator=g)]
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "eval"), per_device_eval_batch_size=8,
                                          report_to=[], use_cpu=True, disable_tqdm=True)
    model = transformers.AutoModelForCausalLM.from_pretrained(trainer_run / "checkpoint-2")
    trainer = transformers.Trainer(model=model, args=args, eval_dataset=evaluation)
    exec(compile(code, "README.md", "exec"), {"trainer": trainer})
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("LAWA")]  # not the Trainer's
    assert [line.split(":")[0] for line in lines] == [f"LAWA k={k}" for k in range(1, 7)]
    assert sorted(p.name for p in tmp_path.glob("runs/out-lawa*")) == [f"out-lawa{k}" for k in range(1, 7)]
    # k=1 is the newest checkpoint itself; after the loop the trainer's model holds the k=6 average
    newest = transformers.AutoModelForCausalLM.from_pretrained(trainer_run / "checkpoint-12")
    trainer.model.load_state_dict(newest.state_dict())
    assert lines[0] == f"LAWA k=1: eval_loss {trainer.evaluate()['eval_loss']:.4f}"
    want = _reference(sorted(trainer_run.glob("checkpoint-*")))
    got = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "runs" / "out-lawa6").state_dict()
    for key, value in want.items():
        assert torch.equal(got[key], value), key


def test_an_interrupted_folder_write_leaves_no_folder_and_force_replaces_whole(trainer_run, tmp_path, monkeypatch):
    """The output folder appears only by a rename once complete: an interrupt mid-write leaves nothing at --out."""
    from lawa_optim.offline import safetensors_io

    out = tmp_path / "lawa"
    real = safetensors_io.write_shard
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        real(*args, **kwargs)
        raise KeyboardInterrupt  # after the shard is written, before the folder is complete

    monkeypatch.setattr(safetensors_io, "write_shard", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_average([trainer_run], out, last=2)
    assert calls and not out.exists() and list(tmp_path.iterdir()) == []
    monkeypatch.setattr(safetensors_io, "write_shard", real)
    out.mkdir()
    (out / "stale.txt").write_text("an older average")
    with pytest.raises(ValueError, match=r"Invalid out: .*lawa' already exists; .*force=True"):
        write_average([trainer_run], out, last=2)
    assert (out / "stale.txt").exists()
    write_average([trainer_run], out, last=2, force=True)
    assert not (out / "stale.txt").exists() and (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lawa"]  # no temporary or old folder left


def test_cli_on_a_trainer_output_folder_after_save_model(trainer_run, tmp_path):
    """`lawa average RUN --last 2`: RUN also holds the final model (Trainer.save_model); its checkpoints are used."""
    click_testing = require("click.testing")
    from lawa_optim.cli import main

    run = tmp_path / "run"
    shutil.copytree(trainer_run, run, ignore=shutil.ignore_patterns("checkpoint-[2468]"))
    for name in ("model.safetensors", "config.json"):  # what save_model writes into the output folder
        shutil.copy(trainer_run / "checkpoint-12" / name, run / name)
    out = tmp_path / "lawa2"
    result = click_testing.CliRunner().invoke(main, ["average", str(run), "--last", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "Averaged 2 Hugging Face checkpoints, uniform weights (oldest first: 0.5, 0.5)" in result.output
    assert f"  {run / 'checkpoint-10'}\n  {run / 'checkpoint-12'}\n" in result.output
    assert f"Wrote {out} (" in result.output
    want = _reference([trainer_run / "checkpoint-10", trainer_run / "checkpoint-12"])
    got = _reference([out])
    for key, value in want.items():
        assert torch.equal(got[key], value), key
    result = click_testing.CliRunner().invoke(main, ["average", str(run), "--last", "2", "--out", str(out)])
    assert result.exit_code == 2 and "already exists; pick a new folder, or pass --force" in result.output
