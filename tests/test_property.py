"""Property tests: random sequences of wrapper operations against a slow reference (issue 7).

A hypothesis state machine drives a :class:`LAWAWrapper` on a random small model and base
optimizer through ``step`` / ``snapshot`` / ``swap_in`` / ``swap_out`` / ``averaged(k=j)`` /
``state_dict`` / ``load_state_dict`` / ``add_param_group``. Beside it runs the reference:

- a twin model stepped by a bare copy of the base optimizer with the same gradients, so the
  training weights must stay bit-identical to the twin's whenever the average is not swapped in;
- a plain Python list of every snapshot (tensor copies), so the swapped-in weights must equal the
  float64 ``torch.stack(...).mean(0)`` of the last j (or the EXP / custom weighted sum).

Both are checked after every operation. Operations that are invalid in the current state (step,
snapshot, load_state_dict or add_param_group while swapped in, a second swap_in, swap_out without
swap_in, averaging before the first snapshot, k out of range, a state dict of another parameter
set, a window of zero custom coefficients) must raise and change nothing: weights, ring, step
counter and optimizer state are compared before and after.

Deterministic: ``derandomize=True`` and no example database, so every run replays the same
sequences.
"""

from __future__ import annotations

import copy
import io
import math
import shutil
import tempfile

import pytest
import torch
from conftest import IN_CI, require
from reference import reference_average
from torch import nn

from lawa_optim import LAWAWrapper, create, exp_coefficients, get_method_info, list_methods

if not IN_CI:  # outside CI a missing hypothesis skips this module; under CI the import fails loudly
    pytest.importorskip("hypothesis", reason="property tests need hypothesis; `make test` installs it")
from hypothesis import HealthCheck, Phase, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule  # noqa: E402

MAX_EXAMPLES = 100  # state machines (random model + optimizer + wrapper) per run
STEPS_PER_EXAMPLE = 30  # operations per sequence
COUNTS = {"sequences": 0, "operations": 0, "invalid": 0}

OPTIMIZERS = {
    "sgd": lambda ps, fe: torch.optim.SGD(ps, lr=0.05, foreach=fe),
    "sgd_momentum": lambda ps, fe: torch.optim.SGD(ps, lr=0.05, momentum=0.9, foreach=fe),
    "adam": lambda ps, fe: torch.optim.Adam(ps, lr=1e-2, foreach=fe),
    "adamw": lambda ps, fe: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1, foreach=fe),
}
DTYPES = (torch.float32, torch.float32, torch.float64, torch.bfloat16)
TOL = {torch.float32: (1e-6, 1e-7), torch.float64: (1e-12, 1e-14), torch.bfloat16: (1e-2, 1e-3)}


class Net(nn.Module):
    """Independent linear blocks of mixed dtypes, plus parameters added later with add_param_group."""

    def __init__(self, sizes: list[tuple[int, int, torch.dtype]], frozen_bias: bool, dead: bool) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.Linear(i, o).to(d) for i, o, d in sizes)
        if frozen_bias:
            self.blocks[0].bias.requires_grad_(False)  # in the optimizer, never gets a gradient
        self.dead = nn.Parameter(torch.randn(3)) if dead else None  # never used in forward
        self.extras = nn.ParameterList()

    def loss(self, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        total = torch.zeros((), dtype=torch.float64)
        for b in self.blocks:
            x = torch.randn(4, b.in_features, generator=g).to(b.weight.dtype)
            total = total + b(x).double().pow(2).mean()
        for e in self.extras:
            total = total + (e.double() - 1).pow(2).sum()
        return total


def _clone_params(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _in_group_order(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The optimizer's parameters in param-group order: the order the wrapper's ring uses."""
    return [p for g in opt.param_groups for p in g["params"]]


def _clone_in_group_order(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in _in_group_order(opt)]


def _assert_same(a, b, what: str) -> None:
    """Bit-identical nested structures of tensors and plain values."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, what
        assert torch.equal(a, b) or (a.isnan().any() and torch.equal(a.nan_to_num(), b.nan_to_num())), what
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), what
        for key in a:
            _assert_same(a[key], b[key], f"{what}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), what
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{what}[{i}]")
    else:
        assert a == b, f"{what}: {a!r} != {b!r}"


class WrapperMachine(RuleBasedStateMachine):
    @initialize(
        sizes=st.lists(
            st.tuples(st.integers(1, 4), st.integers(1, 3), st.sampled_from(DTYPES)), min_size=1, max_size=3
        ),
        frozen_bias=st.booleans(),
        dead=st.booleans(),
        opt_name=st.sampled_from(sorted(OPTIMIZERS)),
        foreach=st.booleans(),
        two_groups=st.booleans(),
        k=st.integers(1, 4),
        period=st.sampled_from([None, 1, 2, 3]),
        weights=st.one_of(
            st.just("uniform"),
            st.just("uniform"),
            st.tuples(st.just("exp"), st.sampled_from([0.5, 0.9, 1.0])),
            st.lists(st.sampled_from([0.0, 0.5, 1.0, 2.0]), min_size=4, max_size=4),
        ),
        seed=st.integers(0, 2**16),
        offload=st.sampled_from([None, None, "cpu", "disk"]),
    )
    def setup(self, sizes, frozen_bias, dead, opt_name, foreach, two_groups, k, period, weights, seed, offload):
        COUNTS["sequences"] += 1
        COUNTS[f"offload={offload}"] = COUNTS.get(f"offload={offload}", 0) + 1
        torch.manual_seed(seed)
        self.model = Net(sizes, frozen_bias, dead)
        self.twin = copy.deepcopy(self.model)
        self.make_opt = lambda ps: OPTIMIZERS[opt_name](ps, foreach)
        self.opt_args = {"k": k, "period": period, "offload": offload}
        if offload == "disk":
            self.tmp = tempfile.mkdtemp(prefix="lawa-property-")
            self.opt_args["offload_dir"] = self.tmp
        if isinstance(weights, tuple):
            self.opt_args.update(weights="exp", alpha=weights[1])
        elif isinstance(weights, list):
            coeffs = weights[:k]
            if sum(coeffs) == 0:
                coeffs[-1] = 1.0  # the constructor rightly refuses all-zero coefficients
            self.opt_args["weights"] = coeffs
        self.opt = LAWAWrapper(self.make_opt(self._groups(self.model, two_groups)), **self.opt_args)
        self.base = self.make_opt(self._groups(self.twin, two_groups))
        self.two_groups = two_groups
        self.history: list[list[torch.Tensor]] = []  # every snapshot ever taken, param-dtype copies
        self.num_steps = 0
        self.swapped: int | None = None  # None, or the window j (k for all) the swapped-in weights average
        self.bank: list[dict] = []  # saved checkpoints: wrapper + model + reference state
        self.next_seed = seed

    @staticmethod
    def _groups(model: Net, two: bool):
        params = list(model.parameters())
        if not two or len(params) < 2:
            return params
        return [{"params": params[::2]}, {"params": params[1::2], "lr": 0.02}]

    def teardown(self):
        if getattr(self, "tmp", None):
            del self.opt  # close the ring's files before removing them
            shutil.rmtree(self.tmp, ignore_errors=True)

    # ------------------------------------------------------------------------- reference
    def _expected_average(self, j: int | None) -> list[torch.Tensor]:
        m = min(j or self.opt.k, len(self.history), self.opt.k)
        weights = self.opt_args.get("weights", "uniform")
        if weights == "uniform":
            coeffs = None
        elif weights == "exp":
            coeffs = exp_coefficients(self.opt_args["alpha"], m)
        else:
            head = weights[:m]
            coeffs = [c / math.fsum(head) for c in head]
        return reference_average(self.history, m, coeffs)

    def _window_invalid(self, j: int | None) -> bool:
        weights = self.opt_args.get("weights", "uniform")
        if isinstance(weights, str) or not self.history:
            return False
        m = min(j or self.opt.k, len(self.history), self.opt.k)
        return math.fsum(weights[:m]) == 0

    def _full_state(self) -> dict:
        return {
            "params": _clone_params(self.model),
            "opt": copy.deepcopy(self.opt.state_dict()),
            "num_steps": self.opt.num_steps,
            "swapped": self.opt.swapped_in,
            "groups": len(self.opt.param_groups),
        }

    def _must_raise(self, exc, fn) -> None:
        COUNTS["invalid"] += 1
        before = self._full_state()
        with pytest.raises(exc):
            fn()
        _assert_same(before, self._full_state(), "state after a refused operation")

    # ------------------------------------------------------------------------- operations
    @rule()
    def step(self):
        COUNTS["operations"] += 1
        seed, self.next_seed = self.next_seed, self.next_seed + 1
        if self.swapped is not None:
            self._must_raise(RuntimeError, self.opt.step)
            return
        for model, opt in ((self.model, self.opt), (self.twin, self.base)):
            opt.zero_grad()
            model.loss(seed).backward()
            opt.step()
        self.num_steps += 1
        if self.opt.period is not None and self.num_steps % self.opt.period == 0:
            self.history.append(_clone_in_group_order(self.base))

    @rule()
    def snapshot(self):
        COUNTS["operations"] += 1
        if self.swapped is not None:
            self._must_raise(RuntimeError, self.opt.snapshot)
            return
        self.opt.snapshot()
        self.history.append(_clone_in_group_order(self.base))

    @rule(j=st.one_of(st.none(), st.integers(0, 6)))
    def swap_in(self, j):
        COUNTS["operations"] += 1
        if self.swapped is not None:
            self._must_raise(RuntimeError, lambda: self.opt.swap_in(j))
        elif j is not None and not 1 <= j <= self.opt.k:
            self._must_raise(ValueError, lambda: self.opt.swap_in(j))
        elif not self.history:
            self._must_raise(RuntimeError, lambda: self.opt.swap_in(j))
        elif self._window_invalid(j):
            self._must_raise(ValueError, lambda: self.opt.swap_in(j))
        else:
            self.opt.swap_in(j)
            self.swapped = self.opt.k if j is None else j

    @rule()
    def swap_out(self):
        COUNTS["operations"] += 1
        if self.swapped is None:
            self._must_raise(RuntimeError, self.opt.swap_out)
            return
        self.opt.swap_out()
        self.swapped = None

    @rule(j=st.one_of(st.none(), st.integers(1, 4)), raise_inside=st.booleans())
    def averaged(self, j, raise_inside):
        """``with opt.averaged(k=j):`` checked inside, and the body raising restores too."""
        COUNTS["operations"] += 1
        if self.swapped is not None or not self.history or (j is not None and j > self.opt.k):
            # The checks' order: swapped in (RuntimeError), k out of range (ValueError), no snapshot.
            exc = ValueError if self.swapped is None and j is not None and j > self.opt.k else RuntimeError
            self._must_raise(exc, lambda: self.opt.averaged(k=j).__enter__())
            return
        if self._window_invalid(j):
            self._must_raise(ValueError, lambda: self.opt.averaged(k=j).__enter__())
            return
        try:
            with self.opt.averaged(k=j):
                self.swapped = self.opt.k if j is None else j
                self.check_weights()
                if raise_inside:
                    raise KeyError("evaluation failed")
        except KeyError:
            assert raise_inside
        self.swapped = None

    @rule(through_disk=st.booleans())
    def save(self, through_disk):
        COUNTS["operations"] += 1
        sd = self.opt.state_dict()
        if through_disk:  # what torch.save + torch.load(weights_only=True) gives back
            buf = io.BytesIO()
            torch.save(sd, buf)
            buf.seek(0)
            sd = torch.load(buf, weights_only=True)
        self.bank.append(
            {
                "sd": copy.deepcopy(sd),
                "model": copy.deepcopy(self.model.state_dict()),
                "twin": copy.deepcopy(self.twin.state_dict()),
                "base": copy.deepcopy(self.base.state_dict()),
                "history": [list(s) for s in self.history],
                "num_steps": self.num_steps,
                "swapped": self.swapped,
                "n_params": len(list(self.model.parameters())),
            }
        )

    @rule(data=st.data())
    def load(self, data):
        COUNTS["operations"] += 1
        if not self.bank:
            return
        ckpt = data.draw(st.sampled_from(self.bank))
        n_params = len(list(self.model.parameters()))
        if self.swapped is not None:
            self._must_raise(RuntimeError, lambda: self.opt.load_state_dict(copy.deepcopy(ckpt["sd"])))
            return
        if ckpt["n_params"] != n_params:  # saved before an add_param_group: another parameter set
            self._must_raise(ValueError, lambda: self.opt.load_state_dict(copy.deepcopy(ckpt["sd"])))
            return
        self.model.load_state_dict(ckpt["model"])
        self.twin.load_state_dict(ckpt["twin"])
        self.opt.load_state_dict(copy.deepcopy(ckpt["sd"]))
        self.base.load_state_dict(copy.deepcopy(ckpt["base"]))
        self.history = [list(s) for s in ckpt["history"]]
        self.num_steps = ckpt["num_steps"]
        # A state saved swapped in loads swapped out: the optimizer's load puts the training weights
        # (the twin's) back over the model's saved average.
        self.swapped = None

    @rule(shape=st.sampled_from([(2,), (1, 3), ()]))
    def add_param_group(self, shape):
        COUNTS["operations"] += 1
        new = nn.Parameter(torch.randn(shape))
        if self.swapped is not None:
            self._must_raise(RuntimeError, lambda: self.opt.add_param_group({"params": [new]}))
            return
        self.model.extras.append(new)
        twin_new = nn.Parameter(new.detach().clone())
        self.twin.extras.append(twin_new)
        self.opt.add_param_group({"params": [new], "lr": 0.03})
        self.base.add_param_group({"params": [twin_new], "lr": 0.03})
        # Documented: a new parameter's history is its current value in every existing slot.
        for snap in self.history:
            snap.append(new.detach().clone())

    # ------------------------------------------------------------------------- the check
    @invariant()
    def check_weights(self):
        if not hasattr(self, "opt"):
            return
        opt = self.opt
        assert opt.param_groups is opt.optimizer.param_groups and opt.state is opt.optimizer.state
        assert opt.num_steps == self.num_steps
        assert opt.swapped_in == (self.swapped is not None)
        assert opt.snapshots_taken == len(self.history)
        assert opt.num_snapshots == min(len(self.history), opt.k)
        params = _in_group_order(opt)
        twin = _in_group_order(self.base)
        # The ring holds exactly the k latest snapshots, bit for bit.
        latest = self.history[-opt.k :] if self.history else []
        for i in range(len(params)):
            ring = opt.snapshots(i)
            assert len(ring) == len(latest)
            for got, want in zip(ring, latest):
                assert torch.equal(got, want[i])
        if self.swapped is None:
            for p, q in zip(params, twin):
                assert torch.equal(p.detach(), q.detach()), "training weights differ from the bare optimizer's"
        else:
            for p, e in zip(params, self._expected_average(self.swapped)):
                rtol, atol = TOL[p.dtype]
                torch.testing.assert_close(p.detach().double(), e, rtol=rtol, atol=atol)
        # The base optimizer's state matches the bare twin's (same keys and values).
        mine, ref = opt.optimizer.state_dict(), self.base.state_dict()
        _assert_same(mine["state"], ref["state"], "optimizer state")


WrapperMachine.TestCase.settings = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=MAX_EXAMPLES,
    stateful_step_count=STEPS_PER_EXAMPLE,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.explicit, Phase.generate],  # no shrinking: a failure prints its whole sequence at once
)
TestWrapperSequences = WrapperMachine.TestCase


# ----------------------------------------------------------------------------- every method of the zoo
ZOO_EXAMPLES = 42  # 6 per method on average
ZOO_KWARGS = {
    "lawa": {"k": 3, "period": 2},
    "exp": {"k": 3, "period": 2, "alpha": 0.5},
    "swa": {"period": 2, "swa_start": 1},
    "ema": {"decay": 0.8},
    "lookahead": {"k": 3},
    "lawa_jump": {"k": 3, "period": 2, "every": 2, "start": 2},
}


class ZooMachine(RuleBasedStateMachine):
    """Every registered method: swaps, saves, loads and refused operations are transparent.

    Beside the wrapper under test runs a *clean* twin of the same method that only ever sees the
    training operations (step, snapshot, add_param_group), rebuilt by replaying the operation log
    when a checkpoint is loaded. Whenever the average is not swapped in, the two models and
    optimizer states must be bit-identical, and the swapped-in weights must be bit-identical to
    the clean twin's.
    """

    @initialize(name=st.sampled_from(list_methods()), width=st.integers(1, 3), seed=st.integers(0, 2**16))
    def setup(self, name, width, seed):
        module = get_method_info(name).requires
        if module is not None:
            require(module, f"the {name!r} method")
        COUNTS["zoo_sequences"] = COUNTS.get("zoo_sequences", 0) + 1
        self.name, self.width, self.seed = name, width, seed
        self.log: list[tuple] = []
        self.model, self.opt = self._build()
        self.clean_model, self.clean = self._build()
        self.swapped = False
        self.bank: list[dict] = []

    def _build(self):
        torch.manual_seed(self.seed)
        model = Net([(2, self.width, torch.float32), (3, 1, torch.float32)], frozen_bias=False, dead=False)
        base = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        return model, create(self.name, base, **ZOO_KWARGS.get(self.name, {}))

    @staticmethod
    def _apply(model, opt, op) -> None:
        if op[0] == "step":
            opt.zero_grad()
            model.loss(op[1]).backward()
            opt.step()
        elif op[0] == "snapshot":
            opt.snapshot()
        else:
            new = nn.Parameter(op[1].clone())
            opt.add_param_group({"params": [new], "lr": 0.03})
            model.extras.append(new)

    def _train_op(self, op) -> None:
        COUNTS["operations"] += 1
        if self.swapped:
            self._must_raise(RuntimeError, lambda: self._apply(self.model, self.opt, op))
            return
        self._apply(self.model, self.opt, op)
        self._apply(self.clean_model, self.clean, op)
        self.log.append(op)

    def _full_state(self) -> dict:
        return {
            "params": _clone_params(self.model),
            "opt": copy.deepcopy(self.opt.state_dict()),
            "num_steps": self.opt.num_steps,
            "swapped": self.opt.swapped_in,
        }

    _must_raise = WrapperMachine._must_raise

    @rule()
    def step(self):
        self._train_op(("step", len(self.log) + self.seed))

    @rule()
    def snapshot(self):
        self._train_op(("snapshot",))

    @rule(shape=st.sampled_from([(2,), ()]))
    def add_param_group(self, shape):
        self._train_op(("add", torch.randn(shape)))

    def _can_average(self) -> bool:
        """Probe both (a swap may create lazy optimizer state, e.g. schedule-free's ``z``)."""
        answers = []
        for opt in (self.opt, self.clean):
            try:
                with opt.averaged():
                    answers.append(True)
            except RuntimeError:
                answers.append(False)
        assert answers[0] == answers[1], f"{self.name}: only one of the two can average"
        return answers[0]

    @rule()
    def swap_in(self):
        COUNTS["operations"] += 1
        if self.swapped or not self._can_average():  # (_can_average only runs when not swapped)
            self._must_raise(RuntimeError, self.opt.swap_in)
            return
        self.opt.swap_in()
        self.swapped = True

    @rule()
    def swap_out(self):
        COUNTS["operations"] += 1
        if not self.swapped:
            self._must_raise(RuntimeError, self.opt.swap_out)
            return
        self.opt.swap_out()
        self.swapped = False

    @rule()
    def save(self):
        COUNTS["operations"] += 1
        buf = io.BytesIO()
        torch.save({"opt": self.opt.state_dict(), "model": self.model.state_dict()}, buf)
        buf.seek(0)
        self.bank.append({"ckpt": torch.load(buf, weights_only=True), "log": list(self.log), "swapped": self.swapped})

    @rule(data=st.data())
    def load(self, data):
        COUNTS["operations"] += 1
        if not self.bank:
            return
        saved = data.draw(st.sampled_from(self.bank))
        adds = sum(op[0] == "add" for op in saved["log"])
        if self.swapped:
            self._must_raise(RuntimeError, lambda: self.opt.load_state_dict(copy.deepcopy(saved["ckpt"]["opt"])))
            return
        if adds != len(self.model.extras):
            self._must_raise(ValueError, lambda: self.opt.load_state_dict(copy.deepcopy(saved["ckpt"]["opt"])))
            return
        self.model.load_state_dict(saved["ckpt"]["model"])
        self.opt.load_state_dict(copy.deepcopy(saved["ckpt"]["opt"]))
        self.swapped = False  # a state saved swapped in loads swapped out, with the training weights
        self.log = list(saved["log"])
        self.clean_model, self.clean = self._build()
        for op in self.log:
            self._apply(self.clean_model, self.clean, op)

    @invariant()
    def transparent(self):
        if not hasattr(self, "opt"):
            return
        assert self.opt.swapped_in == self.swapped
        assert self.opt.num_steps == self.clean.num_steps
        params, clean = _in_group_order(self.opt), _in_group_order(self.clean)
        assert len(params) == len(clean)
        if self.swapped:
            with self.clean.averaged():
                for p, q in zip(params, clean):
                    assert torch.equal(p.detach(), q.detach()), f"{self.name}: swapped-in weights differ"
            return
        for p, q in zip(params, clean):
            assert torch.equal(p.detach(), q.detach()), f"{self.name}: training weights differ"
        _assert_same(self.opt.state_dict(), self.clean.state_dict(), "state_dict")  # optimizer and method
        self._can_average()  # both swap in and out: the next check compares what they restored


ZooMachine.TestCase.settings = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=ZOO_EXAMPLES,
    stateful_step_count=25,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.explicit, Phase.generate],
)
TestZooSequences = ZooMachine.TestCase


def test_counts_are_reported():
    """Runs after the machine (file order): prints the figures for the closing note."""
    print(f"\nproperty figures: {COUNTS}")
