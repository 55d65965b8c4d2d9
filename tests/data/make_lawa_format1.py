"""Writes tests/data/lawa_format1.pt with the code of commit bdafb80 (the last to save format 1):

    git worktree add /tmp/oldtree bdafb80
    PYTHONPATH=/tmp/oldtree python tests/data/make_lawa_format1.py tests/data/lawa_format1.pt
"""
import copy
import sys

import torch
from torch import nn

from lawa_optim import LAWAWrapper


def batches(step):
    g = torch.Generator().manual_seed(step)
    return torch.randn(5, 4, generator=g), torch.randn(5, 2, generator=g)

def run(model, opt, start, steps):
    for s in range(start, start + steps):
        x, y = batches(s)
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2))
opt = LAWAWrapper(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), k=4, period=2)
run(model, opt, 0, 7)   # 3 snapshots of 4: the ring not yet full
sd = copy.deepcopy(opt.state_dict())  # state_dict() holds the live tensors: the steps below would change them
assert sd["lawa"]["format"] == 1, sd["lawa"].keys()
saved = {"model": {k: v.clone() for k, v in model.state_dict().items()}, "opt": sd}
run(model, opt, 7, 5)   # 2 more snapshots: the ring wraps
expected = {"weights": [p.detach().clone() for p in model.parameters()], "avg": {}}
for j in range(1, 5):
    with opt.averaged(j):
        expected["avg"][j] = [p.detach().clone() for p in model.parameters()]
saved["expected_after_5_more_steps"] = expected
torch.save(saved, sys.argv[1])
print("ok", opt.num_steps, opt.num_snapshots)
