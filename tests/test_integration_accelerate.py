"""LAWAWrapper in a plain accelerate loop: behind ``AcceleratedOptimizer``, with gradient
accumulation, ``unwrap(opt).averaged()``, and ``save_state``/``load_state`` resuming bit-exactly (issue 10)."""

from __future__ import annotations

import pytest
import torch
from conftest import require
from reference import reference_average
from torch import nn

from lawa_optim import LAWAWrapper, unwrap
from lawa_optim.integrations.observer import Observer

accelerate = require("accelerate", "accelerate's AcceleratedOptimizer")

K, PERIOD, ACCUM, EPOCHS = 3, 2, 2, 4
X = torch.randn(64, 6, generator=torch.Generator().manual_seed(1))
Y = X @ torch.randn(6, 1, generator=torch.Generator().manual_seed(2)) + 0.1
X_VAL = torch.randn(32, 6, generator=torch.Generator().manual_seed(3))
Y_VAL = X_VAL @ torch.randn(6, 1, generator=torch.Generator().manual_seed(2)) + 0.1


@pytest.fixture(autouse=True)
def _fresh_accelerate_state(one_thread):
    """Accelerator state is a process-wide singleton: start and leave each test with a clean one."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def _setup(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 1))
    opt = LAWAWrapper(torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), k=K, period=PERIOD)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, Y), batch_size=8, shuffle=True)
    accelerator = accelerate.Accelerator(cpu=True, gradient_accumulation_steps=ACCUM)
    model, opt, loader = accelerator.prepare(model, opt, loader)
    return accelerator, model, opt, loader


def _train(accelerator, model, opt, loader, epochs, snaps):
    """The accelerate loop from its docs; records the weights after every PERIOD-th optimizer step."""
    for _ in range(epochs):
        for x, y in loader:
            with accelerator.accumulate(model):
                loss = nn.functional.mse_loss(model(x), y)
                accelerator.backward(loss)
                opt.step()
                opt.zero_grad()
            if accelerator.sync_gradients:
                snaps["steps"] += 1
                if snaps["steps"] % PERIOD == 0:
                    snaps["history"].append([p.detach().clone() for p in model.parameters()])


@torch.no_grad()
def _val_loss(model):
    return nn.functional.mse_loss(model(X_VAL), Y_VAL).item()


def test_the_wrapper_behind_accelerated_optimizer_counts_optimizer_steps_and_averages_exactly():
    accelerator, model, opt, loader = _setup()
    assert type(opt).__name__ == "AcceleratedOptimizer"
    wrapper = unwrap(opt)
    assert isinstance(wrapper, LAWAWrapper)
    snaps = {"steps": 0, "history": []}
    _train(accelerator, model, opt, loader, 2, snaps)
    assert wrapper.num_steps == snaps["steps"] == 2 * len(loader) // ACCUM  # batches / accumulation
    assert wrapper.num_snapshots == K
    before = [p.detach().clone() for p in model.parameters()]
    with wrapper.averaged():
        averaged = [p.detach().clone() for p in model.parameters()]
    for got, ref in zip(averaged, reference_average(snaps["history"], K)):
        torch.testing.assert_close(got.double(), ref, rtol=1e-6, atol=1e-7)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # restored bit-exactly


def test_save_state_load_state_resumes_bit_exactly(tmp_path):
    accelerator, model, opt, loader = _setup()
    full = {"steps": 0, "history": []}
    _train(accelerator, model, opt, loader, EPOCHS, full)
    with unwrap(opt).averaged():
        full_avg = [p.detach().clone() for p in model.parameters()]
        full_val = _val_loss(model)
    full_weights = [p.detach().clone() for p in model.parameters()]

    accelerator, model, opt, loader = _setup()
    half = {"steps": 0, "history": []}
    _train(accelerator, model, opt, loader, EPOCHS // 2, half)
    accelerator.save_state(str(tmp_path / "state"))

    accelerator, model, opt, loader = _setup(seed=1)  # other initial weights: all must come from the files
    accelerator.load_state(str(tmp_path / "state"))
    assert unwrap(opt).num_steps == half["steps"] and unwrap(opt).num_snapshots == K
    _train(accelerator, model, opt, loader, EPOCHS - EPOCHS // 2, half)
    assert all(torch.equal(a, b) for a, b in zip(full_weights, model.parameters()))
    with unwrap(opt).averaged():
        assert all(torch.equal(a, b) for a, b in zip(full_avg, model.parameters()))
        assert _val_loss(model) == full_val


def test_an_observer_counts_the_accelerated_optimizers_real_steps():
    """The integrations' shim sees through AcceleratedOptimizer: a plain SGD, observed, not wrapped."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 1))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, Y), batch_size=8)
    accelerator = accelerate.Accelerator(cpu=True, gradient_accumulation_steps=ACCUM)
    model, opt, loader = accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=0.05), loader)
    observer = Observer(opt, "lawa", period=PERIOD, k=K)
    snaps = {"steps": 0, "history": []}
    _train(accelerator, model, opt, loader, 1, snaps)
    assert observer.num_steps == snaps["steps"] == len(loader) // ACCUM
    with observer.averaged(model):
        for got, ref in zip(model.parameters(), reference_average(snaps["history"], K)):
            torch.testing.assert_close(got.detach().double(), ref, rtol=1e-6, atol=1e-7)
    observer.close()
