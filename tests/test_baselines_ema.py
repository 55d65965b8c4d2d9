"""EMAWrapper against torch's own ``AveragedModel(multi_avg_fn=get_ema_multi_avg_fn(decay))``."""

from __future__ import annotations

import pytest
import torch
from helpers import class_batches, mlp, train_classifier
from test_zoo import _eval_weights, _weights
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from lawa_optim import EMAWrapper, create


@pytest.mark.parametrize("decay,update_every", [(0.999, 1), (0.8, 3)])
def test_matches_averaged_model_bit_exactly(decay, update_every):
    data = class_batches(n=16, seed=123)
    model, ref_model = mlp(4, 8, 3), mlp(4, 8, 3)
    opt = EMAWrapper(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), decay=decay, update_every=update_every)
    ref_opt = torch.optim.SGD(ref_model.parameters(), lr=0.1, momentum=0.9)
    ema_model = AveragedModel(ref_model, multi_avg_fn=get_ema_multi_avg_fn(decay))
    for step in range(1, 13):
        train_classifier(model, opt, data, 1, start=step - 1)
        train_classifier(ref_model, ref_opt, data, 1, start=step - 1)
        if step % update_every == 0:
            ema_model.update_parameters(ref_model)
            assert opt.num_updates == int(ema_model.n_averaged)
            ema = [p.detach() for p in ema_model.module.parameters()]
            assert all(torch.equal(a, b) for a, b in zip(_eval_weights(model, opt), ema, strict=True))
    assert opt.num_updates == 12 // update_every
    assert all(torch.equal(a, b) for a, b in zip(_weights(model), _weights(ref_model), strict=True))


def test_registry_default_decay_and_no_average_before_first_update():
    model = mlp(4, 8, 3)
    opt = create("ema", torch.optim.SGD(model.parameters(), lr=0.1), update_every=2)
    assert opt.decay == 0.999 and opt.update_every == 2
    with pytest.raises(RuntimeError, match="No EMA yet"):
        opt.averaged()
    train_classifier(model, opt, class_batches(n=16, seed=123), 1)
    with pytest.raises(RuntimeError, match="No EMA yet"):
        opt.averaged()
    train_classifier(model, opt, class_batches(n=16, seed=123), 1, start=1)
    assert opt.num_snapshots == 1
    with opt.averaged():  # the first update copies the weights
        pass


def test_half_precision_parameters_keep_a_float32_ema():
    model = nn.Linear(3, 2).to(torch.bfloat16)
    opt = EMAWrapper(torch.optim.SGD(model.parameters(), lr=0.1), decay=0.999)
    ref = [p.detach().float().clone() for p in model.parameters()]
    for _ in range(5):
        opt.zero_grad()
        model(torch.ones(4, 3, dtype=torch.bfloat16)).float().sum().backward()
        opt.step()
        cur = [p.detach().float() for p in model.parameters()]
        ref = cur if opt.num_updates == 1 else [r.lerp(c, 1 - 0.999) for r, c in zip(ref, cur, strict=True)]
    assert all(a.dtype == torch.float32 for a in opt._shadow.avg)
    assert all(torch.equal(a, r) for a, r in zip(opt._shadow.avg, ref, strict=True))


def test_add_param_group_starts_its_ema_at_the_current_value():
    a, b = nn.Linear(2, 2), nn.Linear(2, 1)
    opt = EMAWrapper(torch.optim.SGD(a.parameters(), lr=0.1), decay=0.5)
    opt.zero_grad()
    a(torch.ones(1, 2)).sum().backward()
    opt.step()
    opt.add_param_group({"params": list(b.parameters())})
    before = [p.detach().clone() for p in b.parameters()]
    with opt.averaged():
        assert all(torch.equal(p, q) for p, q in zip(b.parameters(), before, strict=True))
