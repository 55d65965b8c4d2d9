"""Offline averaging of saved checkpoints (lawa_optim.offline), against an independent reference."""

from __future__ import annotations

import argparse
import fractions
import math
from collections import OrderedDict

import pytest
import torch
from conftest import require

from lawa_optim.io import CheckpointError, UnsafeCheckpointError
from lawa_optim.offline import average_checkpoints, average_state_dicts, natural_key, write_average
from lawa_optim.offline import pickled as offline_pickled

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp64": torch.float64}


def make_state(seed: int) -> OrderedDict:
    """A state dict with mixed float dtypes, an integer buffer, a bool mask and a non-tensor entry."""
    g = torch.Generator().manual_seed(seed)
    sd = OrderedDict()
    for name, dtype in DTYPES.items():
        sd[f"{name}.weight"] = (torch.randn(7, 5, generator=g) * (1 + seed)).to(dtype)
    sd["bn.running_mean"] = torch.randn(5, generator=g)
    sd["bn.num_batches_tracked"] = torch.tensor(100 * (seed + 1))
    sd["mask"] = torch.rand(5, generator=g) > 0.5
    sd["steps"] = torch.arange(3, dtype=torch.int32) + seed
    sd["_extra"] = {"seed": seed}
    sd["scalar"] = torch.tensor(float(seed))  # 0-dim float: averaged
    return sd


def save_states(tmp_path, n: int, wrap: bool = False, start: int = 0) -> tuple[list, list]:
    states, paths = [], []
    for i in range(start, start + n):
        sd = make_state(i)
        path = tmp_path / f"checkpoint{i + 1}.pt"
        obj = sd
        if wrap:  # the layout of a fairseq checkpoint
            obj = {"args": None, "cfg": {"model": {"_name": "tiny"}, "common": {"seed": i}}, "model": sd,
                   "criterion": None, "optimizer_history": [{"num_updates": 10 * i, "optimizer_name": "Adam"}],
                   "task_state": {}, "extra_state": {"epoch": i + 1},
                   "last_optimizer_state": {"state": {0: {"exp_avg": torch.ones(1000)}}}}
        torch.save(obj, path)
        states.append(sd)
        paths.append(path)
    return states, paths


def reference_mean(states: list, coefficients: list[float] | None = None) -> dict:
    """Slow and obvious: stack in float64, (weighted) mean, cast back; other entries from the newest."""
    out = {}
    for key, value in states[-1].items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            stack = torch.stack([sd[key].to(torch.float64) for sd in states])
            if coefficients is None:
                mean = stack.mean(0)
            else:
                c = torch.tensor(coefficients, dtype=torch.float64).reshape(-1, *([1] * value.dim()))
                mean = (stack * c).sum(0)
            out[key] = mean.to(value.dtype)
        else:
            out[key] = value
    return out


def assert_state_equal(got, want, exact: bool = True) -> None:
    assert list(got) == list(want)
    for key, value in want.items():
        if isinstance(value, torch.Tensor):
            assert got[key].dtype == value.dtype, key
            if exact:
                assert torch.equal(got[key], value), key
            else:
                torch.testing.assert_close(got[key], value, rtol=2e-7 if value.dtype == torch.float32 else 0.008,
                                           atol=1e-12, msg=key)
        else:
            assert got[key] == value, key


def test_uniform_matches_reference_bit_exact(tmp_path):
    states, paths = save_states(tmp_path, 5)
    got = average_checkpoints(paths)
    assert isinstance(got, OrderedDict)
    assert_state_equal(got, reference_mean(states))
    # integer buffers come from the newest file, undivided: a mean would be 300, not 500
    assert got["bn.num_batches_tracked"].item() == 500
    assert torch.equal(got["steps"], torch.tensor([4, 5, 6], dtype=torch.int32))
    assert got["_extra"] == {"seed": 4}
    # mixed dtypes stay what they were
    assert {k: got[k].dtype for k in ("fp16.weight", "bf16.weight")} == {
        "fp16.weight": torch.float16, "bf16.weight": torch.bfloat16}


@pytest.mark.parametrize("dtype, big", [(torch.float16, 2048.0), (torch.bfloat16, 256.0)])
def test_low_precision_accumulates_in_float64(dtype, big):
    # a low-precision running sum loses the small terms: big + 1 rounds back to big (2048 in fp16, 256 in bf16)
    states = [{"w": torch.tensor([v], dtype=dtype)} for v in (big, 1.0, 1.0, 1.0)]
    got = average_state_dicts(states)["w"]
    want = torch.tensor([(big + 3) / 4], dtype=torch.float64).to(dtype)
    assert torch.equal(got, want)
    naive = sum(sd["w"] for sd in states) / 4
    assert not torch.equal(naive, want)


def test_exp_weights_match_the_formula(tmp_path):
    states, paths = save_states(tmp_path, 4)
    alpha = 0.7
    raw = [alpha * (1 - alpha) ** age for age in range(4)]  # newest first
    coeffs = [c / math.fsum(raw) for c in reversed(raw)]  # oldest first
    got = average_checkpoints(paths, weights="exp", alpha=alpha)
    assert_state_equal(got, reference_mean(states, coeffs), exact=False)
    summary = write_average(paths, tmp_path / "avg.pt", weights="exp", alpha=alpha)
    assert summary.coefficients == pytest.approx(coeffs, rel=1e-15)
    assert max(summary.coefficients) == summary.coefficients[-1]  # newest weighted most
    # alpha=1: only the newest counts
    assert_state_equal(average_checkpoints(paths, weights="exp", alpha=1.0), states[-1])


def test_last_and_natural_sort(tmp_path):
    states, paths = save_states(tmp_path, 12)
    assert_state_equal(average_checkpoints(paths, last=3), reference_mean(states[-3:]))
    shuffled = [paths[i] for i in (10, 1, 11, 0, 9, 2, 3, 4, 5, 6, 7, 8)]
    assert [p.name for p in sorted(shuffled, key=natural_key)][:3] == ["checkpoint1.pt", "checkpoint2.pt",
                                                                      "checkpoint3.pt"]
    assert_state_equal(average_checkpoints(shuffled, last=3, sort=True), reference_mean(states[-3:]))
    # natural order is the default; sort=False keeps the order given: the "last 3" are then 10, 11 and 12 shuffled
    assert_state_equal(average_checkpoints(shuffled, last=3), reference_mean(states[-3:]))
    assert_state_equal(average_checkpoints(shuffled[:3], weights="exp", sort=False),
                       average_checkpoints([paths[10], paths[1], paths[11]], weights="exp", sort=False))
    assert not torch.equal(average_checkpoints(shuffled[:3], weights="exp", sort=False)["fp32.weight"],
                           average_checkpoints(shuffled[:3], weights="exp")["fp32.weight"])
    with pytest.raises(ValueError, match="Invalid last: 13 but only 12"):
        average_checkpoints(paths, last=13)
    with pytest.raises(ValueError, match="Invalid last: 0"):
        average_checkpoints(paths, last=0)


def test_state_dicts_in_memory_equal_files(tmp_path):
    states, paths = save_states(tmp_path, 3)
    assert_state_equal(average_state_dicts(states), average_checkpoints(paths))
    assert_state_equal(average_state_dicts(states, weights=[0.5, 0.25, 0.25]),  # custom, newest first
                       reference_mean(states, [0.25, 0.25, 0.5]), exact=False)
    bn = torch.nn.BatchNorm1d(3)
    avg = average_state_dicts([bn.state_dict(), bn.state_dict()])
    assert avg._metadata == bn.state_dict()._metadata  # load_state_dict's version info survives
    torch.nn.BatchNorm1d(3).load_state_dict(avg)


def _tied_state(seed: int, tie: bool) -> dict:
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(6, 4, generator=g)
    return {"emb.weight": emb, "body": torch.randn(3, generator=g),
            "head.weight": emb if tie else emb + torch.randn(6, 4, generator=g)}


@pytest.mark.parametrize("ties", [(True, True, True), (True, False, True), (False, True, True)])
def test_tied_weights_stay_tied_while_every_file_ties_them(tmp_path, ties):
    states = [_tied_state(i, tie) for i, tie in enumerate(ties)]
    paths = []
    for i, sd in enumerate(states):
        torch.save(sd, tmp_path / f"c{i}.pt")  # torch.save keeps the sharing; so does loading
        paths.append(tmp_path / f"c{i}.pt")
    write_average(paths, tmp_path / "avg.pt")
    got = torch.load(tmp_path / "avg.pt", weights_only=True)
    assert_state_equal(got, reference_mean(states))
    shared = got["emb.weight"].data_ptr() == got["head.weight"].data_ptr()
    assert shared == all(ties)  # one tensor in the file only when every input tied them


def test_fairseq_layout_keeps_newest_entries_and_drops_optimizer(tmp_path):
    states, paths = save_states(tmp_path, 3, wrap=True)
    got = average_checkpoints(paths)
    assert list(got) == ["args", "cfg", "model", "criterion", "optimizer_history", "task_state", "extra_state"]
    assert_state_equal(got["model"], reference_mean(states))
    assert got["extra_state"] == {"epoch": 3} and got["cfg"]["common"]["seed"] == 2
    assert got["optimizer_history"][-1]["num_updates"] == 20
    kept = average_checkpoints(paths, keep_optimizer=True)
    assert torch.equal(kept["last_optimizer_state"]["state"][0]["exp_avg"], torch.ones(1000))
    # more entries left out on request, as dotted paths; the newest file's own dicts are not changed
    slim = average_checkpoints(paths, drop=["extra_state.epoch", "task_state"])
    assert slim["extra_state"] == {} and "task_state" not in slim
    with pytest.raises(ValueError, match=r"Invalid drop: 'extra_state\.ema' is not in .*checkpoint1\.pt; "
                                         r"extra_state holds 'epoch'"):
        average_checkpoints(paths, drop=["extra_state.ema"])
    with pytest.raises(ValueError, match="Invalid drop: 'model' holds the weights"):
        average_checkpoints(paths, drop=["model"])
    with pytest.raises(TypeError, match="Invalid drop: 'task_state'"):
        average_checkpoints(paths, drop="task_state")
    # another key (Lightning's "state_dict")
    lightning = tmp_path / "l.pt"
    torch.save({"state_dict": states[0], "epoch": 3}, lightning)
    assert_state_equal(average_checkpoints([lightning], key="state_dict")["state_dict"], states[0])
    with pytest.raises(CheckpointError, match="has no entry 'model_ema'"):
        average_checkpoints([lightning], key="model_ema")


def test_streams_pieces_never_whole_files(tmp_path, monkeypatch):
    """No file's weights are loaded whole: every file's structure is read onto the meta device, each
    floating tensor in pieces at its offset in the file; only the newest file is loaded (memory-mapped),
    for its other entries."""
    from lawa_optim.offline.accumulate import CHUNK
    from lawa_optim.offline.pickled_io import PickledSource

    states, paths = save_states(tmp_path, 5, wrap=True)
    loaded, reads = [], []
    real_load, real_read = offline_pickled.load_pickled, PickledSource.read_into
    monkeypatch.setattr(offline_pickled, "load_pickled", lambda p, trust: loaded.append(p) or real_load(p, trust))

    def read_into(self, key, start, out):
        assert key in self.offsets  # read from the file, not from a loaded tensor
        reads.append((self.name, key, start, out.numel()))
        real_read(self, key, start, out)

    monkeypatch.setattr(PickledSource, "read_into", read_into)
    assert_state_equal(average_checkpoints(paths)["model"], reference_mean(states))
    assert loaded == [paths[-1]]
    floating = {k: v.numel() for k, v in states[0].items() if isinstance(v, torch.Tensor) and v.is_floating_point()}
    for path in paths:
        got = {}
        for name, key, start, n in reads:
            if name == str(path):
                assert start == got.get(key, 0) and n <= CHUNK
                got[key] = start + n
        assert got == floating


def _evil_file(path, marker):
    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))  # creates the marker file if ever unpickled

    torch.save({"model": make_state(0), "extra_state": Evil()}, path)


def test_refuses_a_pickle_that_would_run_code(tmp_path):
    _, paths = save_states(tmp_path, 2, wrap=True)
    evil, marker = tmp_path / "checkpoint3.pt", tmp_path / "PWNED"
    _evil_file(evil, marker)
    out = tmp_path / "avg.pt"
    with pytest.raises(UnsafeCheckpointError, match=r"checkpoint3\.pt.*weights_only=True.*trust_pickle=True"):
        write_average([*paths, evil], out)
    assert not marker.exists() and not out.exists()


def test_namespace_loads_safely_and_trust_pickle_loads_the_rest(tmp_path):
    states, _ = save_states(tmp_path, 2)
    legacy = tmp_path / "legacy.pt"  # fairseq-train keeps a legacy arch's config as an argparse.Namespace
    torch.save({"cfg": {"model": argparse.Namespace(arch="roberta_base")}, "model": states[1]}, legacy)
    got = average_checkpoints([legacy])
    assert got["cfg"]["model"].arch == "roberta_base"
    assert_state_equal(got["model"], states[1])
    other = tmp_path / "other.pt"  # a class outside the allow-list: refused unless trusted
    torch.save({"stats": fractions.Fraction(1, 3), "model": states[1]}, other)
    with pytest.raises(UnsafeCheckpointError, match=r"other\.pt.*GLOBAL fractions\.Fraction"):
        average_checkpoints([other])
    got = average_checkpoints([other], trust_pickle=True)
    assert got["stats"] == fractions.Fraction(1, 3)
    assert_state_equal(got["model"], states[1])


@pytest.mark.parametrize("kind", ["keys", "extra_key", "shape", "dtype", "tensor_vs_value"])
def test_refuses_mismatched_files_naming_file_and_keys(tmp_path, kind):
    states, paths = save_states(tmp_path, 3)
    bad = make_state(3)
    if kind == "keys":
        del bad["fp16.weight"]
        match = r"checkpoint_bad\.pt does not match .*checkpoint1\.pt.*lacks 'fp16\.weight'"
    elif kind == "extra_key":
        bad["head.bias"] = torch.zeros(2)
        match = r"checkpoint_bad\.pt.*has extra 'head\.bias'"
    elif kind == "shape":
        bad["fp32.weight"] = torch.zeros(5, 7)
        match = r"checkpoint_bad\.pt.*'fp32\.weight': \(5, 7\) float32 vs \(7, 5\) float32"
    elif kind == "dtype":
        bad["bf16.weight"] = bad["bf16.weight"].float()
        match = r"checkpoint_bad\.pt.*'bf16\.weight': \(7, 5\) float32 vs \(7, 5\) bfloat16"
    else:
        bad["scalar"] = 3.0
        match = r"checkpoint_bad\.pt.*'scalar': not a tensor vs \(\) float32"
    torch.save(bad, tmp_path / "checkpoint_bad.pt")
    out = tmp_path / "avg.pt"
    with pytest.raises(CheckpointError, match=match):
        write_average([*paths, tmp_path / "checkpoint_bad.pt"], out)
    assert not out.exists()
    out.write_bytes(b"an older average")  # an existing file is left as it was
    with pytest.raises(CheckpointError, match=match):
        write_average([*paths, tmp_path / "checkpoint_bad.pt"], out, force=True)
    assert out.read_bytes() == b"an older average"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary file


@pytest.mark.filterwarnings("ignore:Validating sparse tensor invariants")
def test_bad_files_are_named(tmp_path):
    _, paths = save_states(tmp_path, 2)
    data = paths[1].read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"trunc\.pt' could not be read; it is truncated"):
        average_checkpoints([paths[0], tmp_path / "trunc.pt"])
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty\.pt' is empty"):
        average_checkpoints([tmp_path / "empty.pt"])
    with pytest.raises(CheckpointError, match=r"nope\.pt' does not exist"):
        average_checkpoints([paths[0], tmp_path / "nope.pt"])
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match=r"list\.pt holds a list"):
        average_checkpoints([tmp_path / "list.pt"])
    torch.save({"step": torch.tensor(3)}, tmp_path / "ints.pt")
    with pytest.raises(CheckpointError, match=r"ints\.pt holds no floating-point tensors"):
        average_checkpoints([tmp_path / "ints.pt"])
    torch.save({"model": make_state(0)}, tmp_path / "wrapped.pt")
    with pytest.raises(CheckpointError, match=r"wrapped\.pt is a fairseq checkpoint with 'model' but the first file "
                                              r"is a plain state dict"):
        average_checkpoints([paths[0], tmp_path / "wrapped.pt"])
    torch.save({"w": torch.zeros(3).to_sparse()}, tmp_path / "sparse.pt")
    with pytest.raises(CheckpointError, match=r"sparse\.pt: tensor 'w' is torch.sparse_coo"):
        average_checkpoints([tmp_path / "sparse.pt"])


def test_nonfinite_raise_or_skip(tmp_path):
    states, paths = save_states(tmp_path, 4)
    bad = make_state(9)
    bad["fp32.weight"][0, 0] = float("nan")
    bad["fp16.weight"][1, 1] = float("inf")
    torch.save(bad, tmp_path / "checkpoint_nan.pt")
    order = [paths[0], paths[1], tmp_path / "checkpoint_nan.pt", paths[2], paths[3]]
    with pytest.raises(CheckpointError, match=r"checkpoint_nan\.pt holds NaN or Inf in 'fp16\.weight', 'fp32\.weight'"):
        average_checkpoints(order)
    with pytest.warns(RuntimeWarning, match=r"Skipping .*checkpoint_nan\.pt"):
        got = average_checkpoints(order, nonfinite="skip")
    assert_state_equal(got, reference_mean(states))
    raw = [0.5 * 0.5**age for age in range(5)][::-1]  # oldest first; the NaN file (index 2) drops out
    kept = [raw[i] for i in (0, 1, 3, 4)]
    with pytest.warns(RuntimeWarning):
        got = average_checkpoints(order, weights="exp", alpha=0.5, nonfinite="skip", sort=False)
    assert_state_equal(got, reference_mean(states, [c / sum(kept) for c in kept]), exact=False)
    with pytest.raises(ValueError, match="Invalid nonfinite: 'ignore'"):
        average_checkpoints(paths, nonfinite="ignore")


def test_argument_errors(tmp_path):
    _, paths = save_states(tmp_path, 2)
    with pytest.raises(ValueError, match="Invalid weights: 'mean'"):
        average_checkpoints(paths, weights="mean")
    with pytest.raises(ValueError, match="Invalid alpha: 0"):
        average_checkpoints(paths, weights="exp", alpha=0)
    with pytest.raises(ValueError, match="given twice"):
        average_checkpoints([paths[0], paths[1], str(paths[0])])
    with pytest.raises(TypeError, match="give a list"):
        average_checkpoints(str(paths[0]))
    with pytest.raises(ValueError, match="no checkpoints"):
        average_checkpoints([])
    with pytest.raises(ValueError, match="is a directory"):
        write_average(paths, tmp_path)


def test_out_must_not_be_an_input_unless_forced(tmp_path):
    states, paths = save_states(tmp_path, 3)
    before = paths[2].read_bytes()
    with pytest.raises(ValueError, match=r"checkpoint3\.pt' is also an input.*force=True"):
        write_average(paths, paths[2])
    link = tmp_path / "alias.pt"
    link.hardlink_to(paths[2])
    with pytest.raises(ValueError, match="is also an input"):
        write_average(paths, link)
    assert paths[2].read_bytes() == before
    summary = write_average(paths, paths[2], force=True)
    assert summary.out == str(paths[2]) and summary.files == tuple(map(str, paths))
    assert_state_equal(torch.load(paths[2], weights_only=True), reference_mean(states))


@pytest.mark.fairseq
@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")  # hydra, torch.jit notices
def test_real_fairseq_checkpoints_average_and_load_in_fairseq(tmp_path):
    """A tiny RoBERTa built by fairseq, saved as fairseq's Trainer does; the average loads back in fairseq."""
    require("fairseq", "to build and load real fairseq checkpoints")
    from fairseq import checkpoint_utils, options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from omegaconf import OmegaConf

    data = tmp_path / "data-bin"
    data.mkdir()
    (data / "dict.txt").write_text("".join(f"w{i} {10 - i}\n" for i in range(8)))
    args = options.parse_args_and_arch(options.get_training_parser(), [
        str(data), "--task", "masked_lm", "--criterion", "masked_lm", "--arch", "roberta_base", "--encoder-layers",
        "1", "--encoder-embed-dim", "8", "--encoder-ffn-embed-dim", "16", "--encoder-attention-heads", "2",
        "--max-positions", "16", "--tokens-per-sample", "16", "--optimizer", "adam", "--lr", "1e-3", "--cpu"])
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    model = task.build_model(cfg.model)
    opt = torch.optim.Adam(model.parameters())
    paths, states = [], []
    for epoch in range(1, 5):
        with torch.no_grad():  # stand-in for an epoch of training
            for p in model.parameters():
                p.add_(torch.randn_like(p), alpha=0.1)
        model.zero_grad()
        sum(p.sum() for p in model.parameters()).backward()
        opt.step()
        state = {  # the layout of fairseq.trainer.Trainer.state_dict() + save_checkpoint's extra_state
            "args": None, "cfg": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
            "model": model.state_dict(), "criterion": None,
            "optimizer_history": [{"criterion_name": "MaskedLmLoss", "optimizer_name": "FairseqAdam",
                                   "lr_scheduler_state": {"best": 5.0 - epoch}, "num_updates": 10 * epoch}],
            "task_state": {}, "extra_state": {"metrics": {}, "previous_training_time": 1.5 * epoch,
                                              "train_iterator": {"epoch": epoch, "iterations_in_epoch": 0},
                                              "val_loss": 5.0 - epoch, "best": 5.0 - epoch},
            "last_optimizer_state": opt.state_dict(),
        }
        assert isinstance(state["cfg"]["model"], argparse.Namespace)  # what makes weights_only need an allow-list
        path = tmp_path / f"checkpoint{epoch}.pt"
        checkpoint_utils.torch_persistent_save(state, str(path))
        paths.append(path)
        states.append({k: v.clone() for k, v in state["model"].items()})

    out = tmp_path / "checkpoint_lawa.pt"
    summary = write_average(list(reversed(paths)), out, last=3, sort=True)
    assert summary.files == tuple(map(str, paths[1:])) and summary.dropped == ("last_optimizer_state",)
    assert out.stat().st_size < paths[-1].stat().st_size
    want = reference_mean(states[1:])

    with torch.serialization.safe_globals([argparse.Namespace]):  # fairseq's own torch.load is weights_only
        loaded = checkpoint_utils.load_checkpoint_to_cpu(str(out))
        models, _, _ = checkpoint_utils.load_model_ensemble_and_task([str(out)])  # as fairseq-validate does
    assert_state_equal(OrderedDict(loaded["model"]), want)
    assert loaded["extra_state"]["train_iterator"]["epoch"] == 4
    assert loaded["optimizer_history"][-1]["num_updates"] == 40
    tied = ("encoder.sentence_encoder.embed_tokens.weight", "encoder.lm_head.weight")  # RoBERTa ties them
    assert loaded["model"][tied[0]].data_ptr() == loaded["model"][tied[1]].data_ptr()
    got = models[0].state_dict()
    assert list(got) == list(want)
    for key, value in want.items():
        assert torch.equal(got[key], value), key
