"""Checkpoint safety (issue 7): nothing a checkpoint smuggles in runs, bad files get clear errors.

- Every ``torch.load`` in the library and the benchmarks passes ``weights_only=True`` (an AST scan
  of the sources), and :func:`lawa_optim.io.safe_load` refuses a pickle that would run code
  without running it (a marker file the payload would create must not exist afterwards).
- A missing, empty, truncated, garbage or text file gets a :class:`CheckpointError` naming it.
- ``LAWAWrapper.load_state_dict`` with a state dict of another model, k, shape or method raises
  and changes nothing: every tensor of the model, the ring and the optimizer state is compared.
- After ``load_state_dict`` (the wrapper's or the base optimizer's), the wrapper still shares the
  base optimizer's ``param_groups`` and ``state``: an LR scheduler keeps driving the real
  learning rate and a group added after resuming is averaged.
"""

from __future__ import annotations

import ast
import copy
import io
import os
import pickle
from pathlib import Path

import pytest
import torch
from ring_formats import to_format1
from torch import nn

from lawa_optim import CheckpointError, LAWAWrapper, atomic_save, safe_load
from lawa_optim.io import UnsafeCheckpointError

ROOT = Path(__file__).resolve().parents[1]

# torch.load calls allowed without weights_only=True, each an explicit opt-in by the user.
ALLOWED_UNSAFE_LOADS = {
    # `lawa average --trust-pickle`: only after weights_only=True refused the file (or a DCP folder's
    # non-tensor value) and the user vouched for it.
    ("lawa_optim/offline/layouts.py", "unpickle_trusted"),
}


class _Evil:
    """Unpickling this runs code: it writes ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def _make(k=3, width=4, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, width), nn.ReLU(), nn.Linear(width, 2))
    opt = LAWAWrapper(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), k=k, period=2)
    return model, opt


def _train(model, opt, steps, seed=1):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        opt.zero_grad()
        model(torch.randn(5, 3, generator=g)).pow(2).mean().backward()
        opt.step()


def _everything(model, opt) -> dict:
    """Every tensor and counter a refused load must leave alone."""
    return {
        "model": {n: t.detach().clone() for n, t in model.state_dict().items()},
        "opt": copy.deepcopy(opt.state_dict()),
        "snapshots": [[s.clone() for s in opt.snapshots(i)] for i in range(len(list(model.parameters())))],
        "num_steps": opt.num_steps,
        "swapped_in": opt.swapped_in,
    }


def _assert_equal(a, b, where="state") -> None:
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_equal(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


# ----------------------------------------------------------------------------- torch.load audit
class _TorchLoads(ast.NodeVisitor):
    """Collects ``torch.load(...)`` calls lacking ``weights_only=True``, with the enclosing function."""

    def __init__(self) -> None:
        self.stack: list[str] = ["<module>"]
        self.found: list[tuple[int, str]] = []

    def visit_FunctionDef(self, node) -> None:
        self.stack.append(node.name)
        self.generic_visit(node)
        self.stack.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Call(self, node: ast.Call) -> None:
        f = node.func
        is_torch = isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id == "torch"
        if is_torch and f.attr == "load":
            safe = any(
                kw.arg == "weights_only" and isinstance(kw.value, ast.Constant) and kw.value.value is True
                for kw in node.keywords
            )
            if not safe:
                self.found.append((node.lineno, self.stack[-1]))
        self.generic_visit(node)


def _torch_loads_without_weights_only() -> list[tuple[str, int, str]]:
    found = []
    for folder in ("lawa_optim", "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            visitor = _TorchLoads()
            visitor.visit(ast.parse(path.read_text(), filename=rel))
            found += [(rel, n, fn) for n, fn in visitor.found]
    return found


def test_every_torch_load_in_the_project_is_weights_only():
    found = _torch_loads_without_weights_only()
    unsafe = [f"{rel}:{n} in {fn}()" for rel, n, fn in found if (rel, fn) not in ALLOWED_UNSAFE_LOADS]
    assert unsafe == [], "torch.load without weights_only=True; use lawa_optim.io.safe_load"
    # An allowed entry names where the one full unpickle is: a stale entry (the function moved) is an error too.
    assert {(rel, fn) for rel, _, fn in found} >= ALLOWED_UNSAFE_LOADS


# ----------------------------------------------------------------------------- crafted pickles
@pytest.mark.parametrize("fmt", ["torch_zip", "torch_legacy", "raw_pickle"])
def test_a_pickle_that_would_run_code_is_refused_and_not_run(tmp_path, fmt):
    marker = tmp_path / "MARKER"
    evil = tmp_path / "evil.pt"
    payload = {"model": {"w": torch.ones(2)}, "cfg": _Evil(marker)}
    if fmt == "torch_zip":
        torch.save(payload, evil)
    elif fmt == "torch_legacy":
        torch.save(payload, evil, _use_new_zipfile_serialization=False)
    else:
        evil.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(UnsafeCheckpointError, match=r"evil\.pt.*refused by torch.load\(weights_only=True\)"):
        safe_load(evil)
    assert not marker.exists(), "the payload ran"
    # The control: a plain full unpickle would have run it (so the test can fail).
    if fmt == "raw_pickle":
        pickle.loads(evil.read_bytes())
        assert marker.exists()


def test_a_wrapper_state_dict_holds_only_safe_types(tmp_path):
    model, opt = _make()
    _train(model, opt, 5)
    with opt.averaged():
        sd = opt.state_dict()  # saved while swapped in: holds the training weights too
    atomic_save(sd, tmp_path / "opt.pt")
    loaded = safe_load(tmp_path / "opt.pt")
    _assert_equal(loaded["lawa"], sd["lawa"])


# ----------------------------------------------------------------------------- broken files
def _good_bytes(legacy=False) -> bytes:
    buf = io.BytesIO()
    _, opt = _make()
    torch.save(opt.state_dict(), buf, _use_new_zipfile_serialization=not legacy)
    return buf.getvalue()


BROKEN = {
    "missing": None,
    "empty": lambda: b"",
    "half": lambda: _good_bytes()[: len(_good_bytes()) // 2],
    "first_bytes": lambda: _good_bytes()[:10],
    "tail_cut": lambda: _good_bytes()[:-30],
    "legacy_half": lambda: _good_bytes(True)[: len(_good_bytes(True)) // 2],
    "zeros": lambda: b"\0" * 512,
    "text": lambda: b"hello world, this is not a checkpoint\n",
    "garbage": lambda: bytes(range(256)) * 4,
}


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_a_broken_file_gets_a_clear_error_naming_it(tmp_path, kind):
    path = tmp_path / f"broken_{kind}.pt"
    if BROKEN[kind] is not None:
        path.write_bytes(BROKEN[kind]())
    with pytest.raises(CheckpointError) as info:
        safe_load(path)
    assert f"broken_{kind}.pt" in str(info.value)
    # Corrupt bytes are not "unsafe": that error is kept for pickles that ask for code.
    assert not isinstance(info.value, UnsafeCheckpointError), str(info.value)


def test_atomic_save_that_fails_midway_keeps_the_old_file(tmp_path):
    path = tmp_path / "ckpt.pt"
    atomic_save({"w": torch.arange(3.0)}, path)
    before = path.read_bytes()
    with pytest.raises(Exception):  # noqa: B017 (torch.save of a lambda: pickling error)
        atomic_save({"w": torch.zeros(3), "bad": lambda: 0}, path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pt"], "a temporary file was left behind"
    assert torch.equal(safe_load(path)["w"], torch.arange(3.0))


# ----------------------------------------------------------------------------- wrong state dicts
def _foreign_state_dicts():
    """(name, state dict, expected error) for state dicts that must not load into _make()."""
    out = []
    model, opt = _make(k=3, width=4)
    _train(model, opt, 7)
    good = opt.state_dict()

    m4, other_k = _make(k=4)
    _train(m4, other_k, 7)
    out.append(("other_k", other_k.state_dict(), "k=4"))

    m5, other_shape = _make(width=5)
    _train(m5, other_shape, 7)
    out.append(("other_shape", other_shape.state_dict(), "shape"))

    torch.manual_seed(0)
    small = nn.Linear(3, 2)
    other_model = LAWAWrapper(torch.optim.SGD(small.parameters(), lr=0.1, momentum=0.9), k=3, period=2)
    other_model.snapshot()
    out.append(("other_model", other_model.state_dict(), "parameters"))

    other_method = copy.deepcopy(good)
    other_method["lawa"]["method"] = "ema"
    out.append(("other_method", other_method, "ema"))

    plain = copy.deepcopy(opt.optimizer.state_dict())  # the base optimizer's own: no ring anywhere
    out.append(("plain_optimizer", plain, "lawa"))

    wrong_dtype = copy.deepcopy(good)
    wrong_dtype["state"][0]["lawa_slot_1"] = wrong_dtype["state"][0]["lawa_slot_1"].double()
    out.append(("ring_dtype", wrong_dtype, "float64"))

    short_ring = copy.deepcopy(good)
    for entry in short_ring["state"].values():
        del entry["lawa_slot_2"]
    out.append(("ring_length", short_ring, "2 snapshot slots"))

    no_ring = copy.deepcopy(good)
    no_ring["state"][3] = {n: v for n, v in no_ring["state"][3].items() if not n.startswith("lawa_")}
    out.append(("ring_missing", no_ring, r"no lawa_slot_\* entries for parameter\(s\) \[3\]"))

    bad_count = copy.deepcopy(good)
    bad_count["lawa"]["count"] = -1
    for entry in bad_count["state"].values():
        entry["lawa_count"] = torch.tensor(-1)
    out.append(("negative_count", bad_count, "count"))

    bad_head = copy.deepcopy(good)
    for entry in bad_head["state"].values():
        entry["lawa_head"] = torch.tensor(3)
    out.append(("head_past_k", bad_head, "head"))

    differ = copy.deepcopy(good)
    differ["state"][2]["lawa_num_steps"] = torch.tensor(99)
    out.append(("counters_differ", differ, "counters differ"))

    slot_list = copy.deepcopy(good)
    slot_list["state"][1]["lawa_slot_0"] = [0.0]
    out.append(("slot_not_tensor", slot_list, "a list"))

    dcp_other_k = copy.deepcopy(other_k.state_dict())  # as torch's get_optimizer_state_dict passes it on
    del dcp_other_k["lawa"]
    out.append(("dcp_other_k", dcp_other_k, "k=4"))

    swapped = copy.deepcopy(good)
    swapped["lawa"]["swapped_in"] = True
    swapped["lawa"]["training_weights"] = [torch.zeros(1)]
    out.append(("training_weights", swapped, "training weights"))

    groups = copy.deepcopy(good)
    groups["param_groups"].append(copy.deepcopy(groups["param_groups"][0]))
    out.append(("param_groups", groups, "group"))

    # Found here: num_steps was read after the base optimizer had loaded (a partial load).
    no_steps = copy.deepcopy(good)
    del no_steps["lawa"]["num_steps"]
    out.append(("num_steps_missing", no_steps, "num_steps"))
    bad_steps = copy.deepcopy(good)
    bad_steps["lawa"]["num_steps"] = "7"
    out.append(("num_steps_str", bad_steps, "num_steps"))
    not_dict = copy.deepcopy(good)
    not_dict["lawa"] = [1, 2]
    out.append(("lawa_not_dict", not_dict, "not a dict"))

    # Format 1 (the ring and its running sums as lists under "lawa") still loads, so it is still checked.
    # Found here: a running sum that disagrees with the snapshots was loaded silently.
    legacy = to_format1(good)
    nan_sums = copy.deepcopy(legacy)
    nan_sums["lawa"]["sums"][0].view(-1)[0] = float("nan")
    out.append(("sums_nan", nan_sums, "running sum of parameter 0"))
    skewed = copy.deepcopy(legacy)
    skewed["lawa"]["sums"][2].add_(1.0)
    out.append(("sums_skewed", skewed, "running sum of parameter 2"))
    ring_lists = copy.deepcopy(legacy)
    ring_lists["lawa"]["ring"] = [[0.0]] * len(ring_lists["lawa"]["ring"])
    out.append(("ring_not_tensors", ring_lists, "list of tensors"))
    sums_none = copy.deepcopy(legacy)
    sums_none["lawa"]["sums"] = None
    out.append(("sums_none", sums_none, "list of tensors"))
    legacy_dtype = copy.deepcopy(legacy)
    legacy_dtype["lawa"]["ring"] = [r.double() for r in legacy_dtype["lawa"]["ring"]]
    out.append(("legacy_ring_dtype", legacy_dtype, "float64"))
    legacy_short = copy.deepcopy(legacy)
    legacy_short["lawa"]["ring"] = legacy_short["lawa"]["ring"][:-1]
    out.append(("legacy_ring_length", legacy_short, "parameters"))
    return out


FOREIGN = ["other_k", "other_shape", "other_model", "other_method", "plain_optimizer", "ring_dtype",
           "ring_length", "ring_missing", "negative_count", "head_past_k", "counters_differ", "slot_not_tensor",
           "dcp_other_k", "training_weights", "param_groups", "num_steps_missing", "num_steps_str",
           "lawa_not_dict", "sums_nan", "sums_skewed", "ring_not_tensors", "sums_none", "legacy_ring_dtype",
           "legacy_ring_length"]


@pytest.mark.parametrize("name", FOREIGN)
def test_load_state_dict_from_something_else_raises_and_changes_nothing(name):
    cases = {n: (sd, match) for n, sd, match in _foreign_state_dicts()}
    assert sorted(cases) == sorted(FOREIGN)
    sd, match = cases[name]
    model, opt = _make(k=3, width=4)
    _train(model, opt, 5, seed=3)
    before = _everything(model, opt)
    with pytest.raises((ValueError, TypeError), match=match):
        opt.load_state_dict(sd)
    _assert_equal(before, _everything(model, opt), name)
    _train(model, opt, 1, seed=4)  # and it still trains and averages
    with opt.averaged():
        pass


def test_load_state_dict_while_swapped_in_raises_and_changes_nothing():
    model, opt = _make()
    _train(model, opt, 6)
    sd = copy.deepcopy(opt.state_dict())
    _train(model, opt, 2)
    with opt.averaged():
        before = _everything(model, opt)
        with pytest.raises(RuntimeError, match="swapped in"):
            opt.load_state_dict(sd)
        _assert_equal(before, _everything(model, opt))


# ----------------------------------------------------------------------------- sharing after load
@pytest.mark.parametrize("via", ["wrapper", "base_optimizer"])
def test_scheduler_and_new_groups_still_reach_the_base_optimizer_after_load(via):
    """Bug found by the property tests: torch's Optimizer.load_state_dict replaces the base's
    ``param_groups``/``state`` objects, so the wrapper kept stale ones: a scheduler built on the
    wrapper then changed a learning rate nobody used, and a group added after resuming was not
    in the ring."""
    model, opt = _make()
    _train(model, opt, 4)
    sd = copy.deepcopy(opt.state_dict())
    model2, opt2 = _make()
    if via == "wrapper":
        opt2.load_state_dict(sd)
    else:
        opt2.optimizer.load_state_dict({k: v for k, v in sd.items() if k != "lawa"})
    assert opt2.param_groups is opt2.optimizer.param_groups
    assert opt2.state is opt2.optimizer.state
    sched = torch.optim.lr_scheduler.StepLR(opt2, step_size=1, gamma=0.5)
    _train(model2, opt2, 1)
    sched.step()
    assert opt2.optimizer.param_groups[0]["lr"] == pytest.approx(0.05)
    extra = nn.Parameter(torch.full((2,), 7.0))
    opt2.add_param_group({"params": [extra]})
    opt2.snapshot()
    assert opt2.num_snapshots >= 1
    with opt2.averaged():
        assert torch.equal(extra.detach(), torch.full((2,), 7.0))  # its history: its value in every slot
    index = next(i for i, p in enumerate(p for g in opt2.param_groups for p in g["params"]) if p is extra)
    assert all(torch.equal(s, torch.full((2,), 7.0)) for s in opt2.snapshots(index))


@pytest.mark.slow
def test_truncations_and_random_bytes_give_checkpoint_errors(tmp_path):
    """Fuzz: a wrapper state dict cut at every 3rd length (legacy format) or every 13th (zip), and
    200 random byte strings: each load ends in CheckpointError naming the file, never another
    exception (before the fix, IndexError, KeyError and struct.error escaped) and never a load."""
    import random
    import warnings

    _, opt = _make()
    legacy, zipped = io.BytesIO(), io.BytesIO()
    torch.save(opt.state_dict(), legacy, _use_new_zipfile_serialization=False)
    torch.save(opt.state_dict(), zipped)
    rng = random.Random(0)
    cases = [legacy.getvalue()[:n] for n in range(1, len(legacy.getvalue()), 3)]
    cases += [zipped.getvalue()[:n] for n in range(1, len(zipped.getvalue()), 13)]
    cases += [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))) for _ in range(200)]
    assert len(cases) > 500
    path = tmp_path / "fuzzed.pt"
    for data in cases:
        path.write_bytes(data)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about odd pickle protocols
            with pytest.raises(CheckpointError, match="fuzzed.pt"):
                safe_load(path)


# ----------------------------------------------------------------------------- copies
@pytest.mark.parametrize("name", ["lawa", "exp", "ema", "swa", "base"])
def test_deepcopy_gives_an_independent_working_wrapper(name):
    """Bug found here: Optimizer.__getstate__ keeps only defaults/state/param_groups, so a deepcopy
    (or pickle) of a wrapper silently lost its base optimizer and ring (AttributeError on use)."""
    from lawa_optim import create

    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    kwargs = {"period": 1} if name in ("lawa", "exp", "swa") else {}
    opt = create(name, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), **kwargs)
    _train_on(model, opt, 3)
    model2, opt2 = copy.deepcopy((model, opt))
    assert opt2.optimizer is not opt.optimizer and opt2.param_groups is opt2.optimizer.param_groups
    assert all(p is q for p, q in zip(opt2.param_groups[0]["params"], model2.parameters()))
    _train_on(model, opt, 2)
    _train_on(model2, opt2, 2)
    with opt.averaged(), opt2.averaged():
        assert all(torch.equal(p, q) for p, q in zip(model.parameters(), model2.parameters()))
    if name == "lawa":
        model3, opt3 = pickle.loads(pickle.dumps((model, opt)))
        with opt.averaged(), opt3.averaged():
            assert all(torch.equal(p, q) for p, q in zip(model.parameters(), model3.parameters()))


def _train_on(model, opt, steps):
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        opt.zero_grad()
        model(torch.randn(4, 3, generator=g)).pow(2).sum().backward()
        opt.step()


def test_a_disk_offloaded_wrapper_refuses_to_be_copied(tmp_path):
    model = nn.Linear(3, 2)
    opt = LAWAWrapper(torch.optim.SGD(model.parameters(), lr=0.1), k=2, offload="disk", offload_dir=tmp_path)
    opt.snapshot()
    with pytest.raises(TypeError, match="offload='disk'.*state_dict"):
        copy.deepcopy(opt)


# ----------------------------------------------------------------------------- across offload modes
@pytest.mark.parametrize("saved_with", [None, "cpu", "disk"])
@pytest.mark.parametrize("loaded_into", [None, "cpu", "disk"])
def test_a_state_dict_resumes_bit_exactly_across_offload_modes(tmp_path, saved_with, loaded_into):
    def make(offload, folder):
        torch.manual_seed(0)
        model = nn.Linear(3, 2)
        kwargs = {"offload": offload}
        if offload == "disk":
            folder.mkdir()
            kwargs["offload_dir"] = folder
        return model, LAWAWrapper(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), k=3, period=1, **kwargs)

    def train(model, opt, steps, seed):
        g = torch.Generator().manual_seed(seed)
        for _ in range(steps):
            opt.zero_grad()
            model(torch.randn(2, 3, generator=g)).sum().backward()
            opt.step()

    model, opt = make(saved_with, tmp_path / "a")
    train(model, opt, 5, 0)
    atomic_save({"model": model.state_dict(), "opt": opt.state_dict()}, tmp_path / "ckpt.pt")
    train(model, opt, 4, 1)
    model2, opt2 = make(loaded_into, tmp_path / "b")
    state = safe_load(tmp_path / "ckpt.pt")
    model2.load_state_dict(state["model"])
    opt2.load_state_dict(state["opt"])
    train(model2, opt2, 4, 1)
    for j in (1, 2, 3):
        with opt.averaged(k=j), opt2.averaged(k=j):
            assert all(torch.equal(p, q) for p, q in zip(model.parameters(), model2.parameters()))


@pytest.mark.parametrize("name", ["base", "lawa", "exp", "lookahead", "swa", "ema", "schedulefree"])
def test_every_method_refuses_a_state_dict_of_another_shape_and_changes_nothing(name):
    """Bug found here for the bare wrapper ('base'): torch's Optimizer.load_state_dict checks only
    parameter counts, so momentum buffers of another model's shape were loaded silently."""
    from conftest import require

    from lawa_optim import create, get_method_info

    module = get_method_info(name).requires
    if module is not None:
        require(module, f"the {name!r} method")
    kwargs = {"lawa": {"k": 3, "period": 1}, "exp": {"k": 3, "period": 1}, "swa": {"period": 1},
              "ema": {"decay": 0.9}, "lookahead": {"k": 2}}.get(name, {})

    def make(width):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(3, width), nn.Linear(width, 2))
        return model, create(name, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), **kwargs)

    def train(model, opt):
        g = torch.Generator().manual_seed(0)
        for _ in range(4):
            opt.zero_grad()
            model(torch.randn(2, 3, generator=g)).sum().backward()
            opt.step()

    model, opt = make(4)
    other_model, other = make(5)
    train(model, opt)
    train(other_model, other)
    before = {"opt": copy.deepcopy(opt.state_dict()), "params": [p.detach().clone() for p in model.parameters()]}
    with pytest.raises(ValueError, match=r"shape|\(5, 3\)|another model"):
        opt.load_state_dict(copy.deepcopy(other.state_dict()))
    _assert_equal(before, {"opt": opt.state_dict(), "params": [p.detach().clone() for p in model.parameters()]})
