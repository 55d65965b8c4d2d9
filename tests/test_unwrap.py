"""lawa_optim.unwrap: our wrapper from behind the real Lightning and accelerate optimizer proxies."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lawa_optim import LAWAWrapper, unwrap
from lawa_optim.integrations.observer import Observer
from lawa_optim.unwrap import strip_proxies
from tests.conftest import require


def _wrapper() -> LAWAWrapper:
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    return LAWAWrapper(torch.optim.SGD(model.parameters(), lr=0.1), k=2, period=1)


def _lightning_proxy(optimizer):
    require("lightning.pytorch", "Lightning's LightningOptimizer")
    from lightning.pytorch.core.optimizer import LightningOptimizer

    return LightningOptimizer(optimizer)


def _accelerate_proxy(optimizer):
    require("accelerate", "accelerate's AcceleratedOptimizer")
    from accelerate import Accelerator

    return Accelerator(cpu=True).prepare(optimizer)


def test_wrapper_is_returned_as_is():
    opt = _wrapper()
    assert unwrap(opt) is opt


def test_lightning_proxy_gives_the_wrapper_and_swap_state_lands_on_it():
    opt = _wrapper()
    proxy = _lightning_proxy(opt)
    assert isinstance(proxy, LAWAWrapper) and proxy is not opt  # the trap: the proxy passes isinstance
    inner = unwrap(proxy)
    assert inner is opt
    opt.step()
    inner.swap_in()
    assert opt.swapped_in  # the state is on the one wrapper
    opt.swap_out()


def test_accelerate_proxy_gives_the_wrapper():
    opt = _wrapper()
    proxy = _accelerate_proxy(opt)
    assert type(proxy).__name__ == "AcceleratedOptimizer"
    assert unwrap(proxy) is opt


def test_proxy_of_a_plain_optimizer_is_refused_with_the_fix():
    sgd = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
    with pytest.raises(TypeError, match="LightningSGD around SGD is not a lawa_optim wrapper.*LAWAWrapper"):
        unwrap(_lightning_proxy(sgd))
    with pytest.raises(TypeError, match="AcceleratedOptimizer around SGD"):
        unwrap(_accelerate_proxy(sgd))
    with pytest.raises(TypeError, match="str is not a lawa_optim wrapper"):
        unwrap("sgd")


def test_observer_sees_through_the_proxies_to_the_base_optimizer():
    model = nn.Linear(2, 2)
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    proxy = _lightning_proxy(sgd)
    assert strip_proxies(proxy) is sgd
    obs = Observer(proxy, k=2, period=1)
    assert obs.base is sgd
    model(torch.ones(1, 2)).sum().backward()
    sgd.step()  # (a real Trainer steps through the proxy: tests/test_integration_lightning.py)
    assert obs.num_steps == 1
    with pytest.raises(TypeError, match="already a lawa_optim wrapper"):
        Observer(_lightning_proxy(_wrapper()))
