"""The figures of ``lawa bench overhead``: what is timed against what, and each design's floor.

Each ``figure_*`` function returns a dict with the figure's ``name``, its ``reference``, the
measured ``ratio`` (median of interleaved pairs, see :mod:`.measure`), our ``target``
and the ``floor``: the bytes the design must move divided by the bytes of the reference (or 1
where both sides do the same work). ``b`` is the parameters' element size, ``a`` the running
sum's (float64 for float32 parameters); a plain copy moves ``2b`` per element.
"""

from __future__ import annotations

import tempfile
import time
from collections import deque
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from lawa_optim import LAWAWrapper
from lawa_optim.store import acc_dtype

from .measure import Clock, median_time, temporary_bytes, time_pair

__all__ = [
    "PaperAlgorithm1",
    "floors",
    "make_params",
    "lawa_update",
]


def floors(dtype: torch.dtype, k: int) -> dict[str, float]:
    """Bytes moved per element by each design, divided by the bytes of a plain copy (``2b``).

    snapshot: the non-finite read of the parameters (b), then read params (b), read the oldest
    slot (b), write the slot (b), read and write the running sum (2a). averaged enter + exit right
    after a snapshot (the common case): read the sum and write the parameters (a + b), restore
    them from the ring's newest slot (2b); after a step (``averaged_after_step``) the parameters
    are backed up first (2b) and restored from that backup (2b) instead.
    The LAWA update is a snapshot plus writing the average out (a + b); the paper's Algorithm 1
    clones the parameters (2b), stacks k copies (2kb), reads the stack for the mean and writes it
    (kb + b), and copies it into the LAWA model (2b).
    """
    b = torch.empty((), dtype=dtype).element_size()
    a = torch.empty((), dtype=acc_dtype(dtype)).element_size()
    copy_bytes = 2 * b
    lawa_update = 4 * b + 2 * a + a + b
    alg1 = 2 * b + 2 * k * b + k * b + b + 2 * b
    return {
        "snapshot": (4 * b + 2 * a) / copy_bytes,
        "snapshot_k": 1.0,
        "averaged": (3 * b + a) / copy_bytes,
        "averaged_after_step": (5 * b + a) / copy_bytes,
        "lawa_vs_alg1": lawa_update / alg1,
        "ema": 1.0,
    }


def make_params(numel: int, device: torch.device, dtype: torch.dtype = torch.float32, seed: int = 0) -> list[Tensor]:
    """About ``numel`` parameters shaped like a network: 48 weight matrices and 48 small vectors."""
    g = torch.Generator().manual_seed(seed)
    small = min(256, max(1, numel // 1000))
    weights = 48
    rest = numel - weights * small
    sizes = [rest // weights] * weights
    sizes[-1] += rest - sum(sizes)
    out = []
    for w in sizes:
        out.append(nn.Parameter(torch.randn(w, generator=g).to(device=device, dtype=dtype)))
        out.append(nn.Parameter(torch.randn(small, generator=g).to(device=device, dtype=dtype)))
    return out


class PaperAlgorithm1:
    """The paper's Algorithm 1: a queue of k parameter copies, averaged by ``torch.stack(...).mean(0)``.

    ``update(params)`` appends a copy of the parameters (``get_params``) and, once k are queued,
    writes their mean into :attr:`lawa` per tensor (``update_lawa_model``) and drops the oldest.
    """

    def __init__(self, params: Sequence[Tensor], k: int) -> None:
        self.k = k
        self.ckpts: deque[list[Tensor]] = deque()
        self.lawa = [torch.empty_like(p) for p in params]

    @torch.no_grad()
    def update(self, params: Sequence[Tensor]) -> None:
        self.ckpts.append([p.detach().clone() for p in params])
        if len(self.ckpts) >= self.k:
            for avg_p, snaps in zip(self.lawa, zip(*self.ckpts)):
                avg_p.copy_(torch.stack(snaps).mean(0))
            self.ckpts.popleft()


def lawa_update(opt: LAWAWrapper, out: Sequence[Tensor]) -> None:
    """LAWA's counterpart of Algorithm 1's update: one snapshot, then the average written into ``out``."""
    opt.snapshot()
    opt._ring.write_average(out, opt._ring.size, None)


def _filled(params: list[Tensor], k: int, **kwargs) -> LAWAWrapper:
    opt = LAWAWrapper(torch.optim.SGD(params, lr=0.0), k=k, **kwargs)
    for _ in range(k):
        opt.snapshot()  # a full ring: every later snapshot also subtracts the oldest
    return opt


def _row(name: str, reference: str, summary: dict, floor: float | None, target: float | None, **extra) -> dict:
    row = {"figure": name, "reference": reference, **summary, "floor": floor, "target": target}
    row["met"] = None if target is None else bool(summary["ratio"] <= target)
    row.update(extra)
    return row


class _Sizes:
    """What the per-size figure groups share: the parameters, their sizes, the floors and a plain copy."""

    def __init__(self, params: list[Tensor], k: int, ks: tuple[int, int], clock: Clock, repeats: int) -> None:
        self.params, self.k, self.ks, self.clock, self.repeats = params, k, ks, clock, repeats
        p0 = params[0]
        self.numel = sum(p.numel() for p in params)
        self.b = p0.element_size()  # bytes per element
        self.a = torch.empty((), dtype=acc_dtype(p0.dtype)).element_size()  # bytes per accumulator element
        self.fl = floors(p0.dtype, k)
        self.dst = [torch.empty_like(p) for p in params]
        self.detached = [p.detach() for p in params]

    def plain_copy(self) -> None:
        torch._foreach_copy_(self.dst, self.detached)


def _snapshot_rows(c: _Sizes) -> list[dict]:
    """One snapshot vs a plain copy; averaged() enter + exit vs the copy, before and after a step."""
    opt = _filled(c.params, c.k)
    pair = time_pair(opt.snapshot, c.plain_copy, c.clock, c.repeats)
    rows = [_row("snapshot", "foreach_copy", pair.summary(), c.fl["snapshot"], 1.5, k=c.k)]

    def enter_exit() -> None:
        with opt.averaged():
            pass

    pair = time_pair(enter_exit, c.plain_copy, c.clock, c.repeats)
    rows.append(_row("averaged", "foreach_copy", pair.summary(), c.fl["averaged"], 3.0, k=c.k))
    opt.observe_step()  # a step since the snapshot: the training weights need the backup buffer
    pair = time_pair(enter_exit, c.plain_copy, c.clock, c.repeats)
    rows.append(_row("averaged_after_step", "foreach_copy", pair.summary(), c.fl["averaged_after_step"], None, k=c.k))
    return rows


def _fused_rows(c: _Sizes) -> list[dict]:
    """The same snapshot and averaged() enter + exit with ``fused=True`` (the torch.compile'd
    kernels), against the same plain copy and against the eager ring directly (interleaved pairs
    on separate rings over the same parameters); ``compile_s`` is the first fused call's time
    (the compile: cold or from inductor's disk cache, whichever this process finds)."""
    eager = _filled(c.params, c.k)
    opt = _filled(c.params, c.k, fused=True)
    start = time.perf_counter()
    opt.snapshot()  # the ring is full: the first fused push compiles
    push_compile = time.perf_counter() - start
    start = time.perf_counter()
    with opt.averaged():  # the first fused mean compiles
        pass
    mean_compile = time.perf_counter() - start
    note = "torch.compile'd kernels" + (f"; fell back to eager: {opt._ring.fused_fallback}"
                                        if opt._ring.fused_fallback else "")
    pair = time_pair(opt.snapshot, c.plain_copy, c.clock, c.repeats)
    rows = [_row("snapshot_fused", "foreach_copy", pair.summary(), c.fl["snapshot"], 4.8, k=c.k,
                 compile_s=push_compile, note=note)]
    pair = time_pair(opt.snapshot, eager.snapshot, c.clock, c.repeats)
    rows.append(_row("snapshot_fused_vs_eager", "snapshot_eager", pair.summary(), None, None, k=c.k))

    def enter_exit(o: LAWAWrapper) -> Callable[[], None]:
        def run() -> None:
            with o.averaged():
                pass
        return run

    eager.snapshot()
    opt.snapshot()  # the weights are the newest snapshot again: no backup, as in the eager row
    pair = time_pair(enter_exit(opt), c.plain_copy, c.clock, c.repeats)
    rows.append(_row("averaged_fused", "foreach_copy", pair.summary(), c.fl["averaged"], 3.0, k=c.k,
                     compile_s=mean_compile, note=note))
    pair = time_pair(enter_exit(opt), enter_exit(eager), c.clock, c.repeats)
    rows.append(_row("averaged_fused_vs_eager", "averaged_eager", pair.summary(), None, None, k=c.k))
    return rows


def _k_rows(c: _Sizes) -> list[dict]:
    """The same snapshot at the largest vs the smallest k."""
    small, large = c.ks
    opt_s, opt_l = _filled(c.params, small), _filled(c.params, large)
    pair = time_pair(opt_l.snapshot, opt_s.snapshot, c.clock, c.repeats)
    return [_row(f"snapshot_k{large}_vs_k{small}", f"snapshot_k{small}", pair.summary(), 1.0, 1.2)]


def _update_rows(c: _Sizes) -> list[dict]:
    """One LAWA update vs the paper's Algorithm 1, time and temporary memory."""
    params, k = c.params, c.k
    opt = _filled(params, k)
    out = [torch.empty_like(p) for p in params]
    alg = PaperAlgorithm1(params, k)
    for _ in range(k - 1):
        alg.update(params)
    pair = time_pair(lambda: lawa_update(opt, out), lambda: alg.update(params), c.clock, c.repeats)
    device = params[0].device
    mem_lawa, new_lawa = temporary_bytes(lambda: lawa_update(opt, out), device)
    mem_alg, new_alg = temporary_bytes(lambda: alg.update(params), device)
    pb = c.numel * c.b
    return [_row(
        f"lawa_update_k{k}", "paper_algorithm1", pair.summary(), c.fl["lawa_vs_alg1"], 1.0, k=k,
        temp_bytes=mem_lawa, reference_temp_bytes=mem_alg, temp_in_P=mem_lawa / pb,
        reference_temp_in_P=mem_alg / pb, allocated_in_P=new_lawa / pb, reference_allocated_in_P=new_alg / pb,
    )]


def _offload_rows(c: _Sizes) -> list[dict]:
    """The ring in pinned host memory, filled on a side stream, vs an asynchronous copy to pinned memory."""
    pinned = [torch.empty(p.shape, dtype=p.dtype, pin_memory=True) for p in c.params]

    def host_copy() -> None:
        for d, p in zip(pinned, c.detached):
            d.copy_(p, non_blocking=True)

    opt = _filled(c.params, c.k, offload="cpu")
    pair = time_pair(opt.snapshot, host_copy, c.clock, c.repeats)
    return [_row("offload_snapshot", "pinned_host_copy", pair.summary(), None, None, k=c.k,
                 note="host float64 sum update + async copy; the sum update runs on the CPU")]


def _disk_rows(c: _Sizes) -> list[dict]:
    """The ring in memory-mapped files vs a plain copy."""
    with tempfile.TemporaryDirectory(prefix="lawa-bench-") as tmp:
        opt = _filled(c.params, c.k, offload="disk", offload_dir=tmp)
        pair = time_pair(opt.snapshot, c.plain_copy, c.clock, c.repeats)
        row = _row("disk_snapshot", "foreach_copy", pair.summary(), c.fl["snapshot"], None, k=c.k,
                   note="memory-mapped files; page-cache speed while the ring fits in RAM")
        del opt
    return [row]


def size_figures(
    params: list[Tensor], k: int, ks: tuple[int, int], clock: Clock, repeats: int, fits: Callable[[float], bool],
    disk: bool = True, fused: bool = False,
) -> list[dict]:
    """The per-size figures on ``params`` (skipped, with the reason, when ``fits`` refuses their memory);
    ``fused`` adds the ``fused=True`` snapshot and averaged() rows (CPU only)."""
    c = _Sizes(params, k, ks, clock, repeats)
    n, b, a = c.numel, c.b, c.a
    small, large = ks
    groups = [  # (the figures, the memory they need, the function measuring them)
        (("snapshot", "averaged", "averaged_after_step"), (k + 3) * n * b + n * a, _snapshot_rows),
        *([(("snapshot_fused", "snapshot_fused_vs_eager", "averaged_fused", "averaged_fused_vs_eager"),
             2 * ((k + 3) * n * b + n * a), _fused_rows)]
          if fused and params[0].device.type == "cpu" else []),
        ((f"snapshot_k{large}_vs_k{small}",), (small + large + 1) * n * b + 2 * n * a, _k_rows),
        ((f"lawa_update_k{k}",), (3 * k + 4) * n * b + n * a, _update_rows),
        (("ema_update",), 4 * n * b, lambda c: [_ema_row(c.params, c.clock, c.repeats)]),  # vs torch's AveragedModel
    ]
    if params[0].device.type == "cuda":
        groups.append((("offload_snapshot",), (k + 2) * n * b + n * a, _offload_rows))
    if disk:
        groups.append((("disk_snapshot",), 3 * n * b, _disk_rows))
    rows: list[dict] = []
    for names, need, measure in groups:
        if fits(need):
            rows += measure(c)
        else:
            rows += [{"figure": name, "skipped": f"needs ~{need / 2**30:.1f} GiB, over --max-gib"} for name in names]
    for row in rows:
        row["size"] = n
    return rows


def _ema_row(params: list[Tensor], clock: Clock, repeats: int) -> dict:
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    from lawa_optim.baselines.ema import EMAWrapper

    holder = nn.ParameterList(params)
    ema = EMAWrapper(torch.optim.SGD(params, lr=0.0), decay=0.999)
    ema.observe_step()  # the first update copies; later ones average
    swa = AveragedModel(holder, multi_avg_fn=get_ema_multi_avg_fn(0.999), use_buffers=False)
    swa.update_parameters(holder)
    pair = time_pair(ema.observe_step, lambda: swa.update_parameters(holder), clock, repeats)
    return _row("ema_update", "AveragedModel.update_parameters", pair.summary(), 1.0, 1.1)


# --------------------------------------------------------------------------------------- models
def tiny_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1))


def resnet(name: str, num_classes: int = 10) -> nn.Module:
    import torchvision

    torch.manual_seed(0)
    return getattr(torchvision.models, name)(num_classes=num_classes)


def _with_grads(model: nn.Module) -> nn.Module:
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    return model


def step_figure(name: str, model: nn.Module, clock: Clock, repeats: int, inner: int, target: float) -> dict:
    """A non-snapshot ``step()`` through the wrapper vs the same base optimizer's own ``step()``.

    Both sides step the same optimizer on the same tensors, so the difference is the wrapper's
    own work (counting the step, checking the swap state) and nothing else.
    """
    model = _with_grads(model)
    base = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    lawa = LAWAWrapper(base, k=6, period=10**9)
    pair = time_pair(lawa.step, base.step, clock, repeats, inner=inner)
    numel = sum(p.numel() for p in model.parameters())
    return _row(name, "bare_optimizer_step", pair.summary(), 1.0, target, size=numel, inner=inner)


def epoch_figure(
    model_name: str, device: torch.device, clock: Clock, repeats: int, batches: int, batch_size: int,
    image_size: int, k: int = 6, offload: str | None = None,
) -> dict:
    """A training epoch with ``period=len(loader)`` (one snapshot at its end) vs the bare optimizer's.

    Both epochs train the same model with the same base optimizer, once through the wrapper.
    """
    g = torch.Generator().manual_seed(0)
    data = [
        (torch.randn(batch_size, 3, image_size, image_size, generator=g).to(device),
         torch.randint(0, 10, (batch_size,), generator=g).to(device))
        for _ in range(batches)
    ]
    model = resnet(model_name).to(device)
    bare = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    # the same model and base optimizer on both sides: the wrapper's epoch adds its snapshot
    lawa = LAWAWrapper(bare, k=k, period=len(data), offload=offload)
    for _ in range(k):
        lawa.snapshot()  # full ring: the epoch's snapshot also subtracts the oldest

    def epoch(model: nn.Module, opt: torch.optim.Optimizer) -> Callable[[], None]:
        def run() -> None:
            model.train()
            for x, y in data:
                opt.zero_grad(set_to_none=True)
                nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
        return run

    pair = time_pair(epoch(model, lawa), epoch(model, bare), clock, repeats, warmup=1)
    numel = sum(p.numel() for p in model.parameters())
    snap = median_time(lawa.snapshot, clock, max(3, repeats))
    summary = pair.summary()
    return _row(
        f"epoch_{model_name}" + (f"_offload_{offload}" if offload else ""), "bare_optimizer_epoch", summary, 1.0,
        1.01, size=numel, batches=batches,
        batch_size=batch_size, image_size=image_size,
        predicted=1.0 + snap / summary["reference_s"], snapshot_s=snap,
        note=f"{batches} batches per epoch; the snapshot's share falls as 1/len(loader)",
    )
