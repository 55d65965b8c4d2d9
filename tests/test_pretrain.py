"""``lawa bench pretrain`` on a tiny slice: schedules, config checks, end to end, exact resume."""

from __future__ import annotations

import json
import math

import pytest

from lawa_benchmarks import pretrain as pt
from lawa_benchmarks.config_base import ConfigError

TINY = (*pt.QUICK, "steps=40", "eval_every=10", "snapshot_every=5", "ring=4", "windows=[2,4]", "seeds=[0]",
        "weights=[uniform,1-sqrt]", "warmup_steps=2")


def test_schedules():
    cfg = pt.load_config(None, ["steps=1000", "warmup_steps=10", "eval_every=50", "cooldown_fraction=0.2"])
    m = lambda s, t, b=1000: pt.lr_multiplier(s, t, cfg, b)  # noqa: E731
    assert [m("constant", t) for t in (0, 4, 9, 10, 999)] == [0.1, 0.5, 1.0, 1.0, 1.0]
    assert m("cosine", 10) == 1.0 and m("cosine", 505) == pytest.approx(0.5) and m("cosine", 999) < 1e-4
    # WSD: constant to 80% of its budget, then linear to 0 over the last 20%
    assert m("wsd", 799) == 1.0 and m("wsd", 800) == 1.0 and m("wsd", 900) == pytest.approx(0.5)
    assert m("wsd", 450, b=500) == pytest.approx(0.5)  # a shorter budget cools down over its own last 20%
    with pytest.raises(ValueError, match="Invalid schedule: 'step'"):
        m("step", 500)


def test_config_problems_are_named():
    with pytest.raises(ConfigError, match="square"):  # an unknown weight scheme (a field's own check)
        pt.load_config(None, ["weights=[uniform,square]"])
    # the checks across fields are reported together
    with pytest.raises(ConfigError) as err:
        pt.load_config(None, ["steps=1000", "eval_every=300", "snapshot_every=200", "windows=[2,32]",
                              "budgets=[0.5]"])
    text = str(err.value)
    for needle in ("must include 1.0", "multiple of snapshot_every", "exceed the ring", "not a multiple of eval_every"):
        assert needle in text, (needle, text)


def test_config_consistency():
    with pytest.raises(ConfigError, match="exceed the ring"):
        pt.load_config(None, ["ring=4", "windows=[2,8]"])
    with pytest.raises(ConfigError, match="not a multiple of eval_every"):
        pt.load_config(None, ["steps=1000", "eval_every=300"])


@pytest.mark.slow
def test_end_to_end_and_exact_resume(tmp_path, monkeypatch):
    cfg = pt.load_config(None, TINY)
    trained = {"steps": 0}
    real_call = pt._Batches.__call__

    def counted(self, step):
        trained["steps"] += 1
        return real_call(self, step)

    monkeypatch.setattr(pt._Batches, "__call__", counted)
    full = pt.run(cfg, tmp_path / "full", progress=False)
    steps_of_a_whole_run, trained["steps"] = trained["steps"], 0
    files = {p.name for p in (tmp_path / "full").iterdir()}
    assert {"pretrain.json", "pretrain.csv", "pretrain.md", "pretrain_curves.png", "pretrain_budgets.png",
            "pretrain_windows.png"} <= files
    rows = json.loads((tmp_path / "full" / "pretrain.json").read_text())["rows"]
    runs = {r["run"] for r in rows}
    assert runs == {"constant", "cosine10", "cosine20", "cosine30", "cosine40", "wsd10", "wsd20", "wsd30", "wsd40"}
    merges = {(r["weights"], r["window"]) for r in rows if r["method"] == "merge" and r["step"] == 40}
    assert merges == {("uniform", 2), ("uniform", 4), ("1-sqrt", 2), ("1-sqrt", 4)}
    # the target is the cosine run of the whole budget; costs are as the docstring says
    final = next(r["val_loss"] for r in rows if r["run"] == "cosine40" and r["step"] == 40)
    assert full["targets"][0] == final
    assert full["cost"]["cosine (one run per budget)"] == pytest.approx(2.5)
    assert full["cost"]["WSD (cooldown branch per budget)"] == pytest.approx(0.8 + 0.2 * 2.5)
    # a WSD branch starts from the constant run: before its cooldown it IS the constant run
    wsd40 = {r["step"]: r["val_loss"] for r in rows if r["run"] == "wsd40"}
    const = {r["step"]: r["val_loss"] for r in rows if r["run"] == "constant" and r["method"] == "raw"}
    assert min(wsd40) == 40 and wsd40[40] != const[40]
    # ... and the branch is exact: the WSD schedule trained from step 0 ends at the same loss, bit for bit
    workload = pt._workload(cfg)
    replay = pt._train(cfg, workload, 0, "wsd_from_scratch", "wsd", 40, tmp_path / "replay",
                       lambda step, model, opt: [{"val_loss": workload.evaluate(model)["val_loss"]}], progress=False)
    assert replay[-1]["step"] == 40 and replay[-1]["val_loss"] == wsd40[40]
    assert all(math.isfinite(r["val_loss"]) for r in rows)
    # the picks at T: the selection's (lowest loss on the test books) and OnlineK's, per seed, in the tables
    at_t = [r for r in rows if r["seed"] == 0 and r["run"] == "constant" and r["method"] == "merge" and r["step"] == 40]
    chosen = min(at_t, key=lambda r: (r["sel_loss"], r["window"]))
    assert full["selected_picks"][0]["40"] == [chosen["weights"], chosen["window"]]
    online = next(r["window"] for r in rows if r["seed"] == 0 and r["method"] == "online_k" and r["step"] == 40)
    md = (tmp_path / "full" / "pretrain.md").read_text()
    pick_line = md.split("\n| 0 | ")[-1].split("\n")[0]
    assert pick_line.startswith(f"{chosen['weights']}, k={chosen['window']} | ") and pick_line.endswith(f"| {online} |")

    # killed after a few checkpoints, then started again: the same numbers, bit for bit
    saves = {"n": 0}
    real_save = pt._save

    def dying_save(path, obj):
        real_save(path, obj)
        saves["n"] += 1
        if saves["n"] == 7:
            raise KeyboardInterrupt

    monkeypatch.setattr(pt, "_save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        pt.run(cfg, tmp_path / "resumed", progress=False)
    monkeypatch.setattr(pt, "_save", real_save)
    trained["steps"] = 0
    pt.run(cfg, tmp_path / "resumed", progress=False)
    again = json.loads((tmp_path / "resumed" / "pretrain.json").read_text())["rows"]
    assert again == rows
    assert 0 < trained["steps"] < steps_of_a_whole_run - 10  # it went on from its checkpoints, not from step 0

    # the same folder with another config is refused, naming what changed, and nothing is touched
    from lawa_benchmarks.run_state import ResumeError

    other = pt.load_config(None, (*TINY, "lr=1e-3"))
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "resumed").rglob("*")}
    with pytest.raises(ResumeError, match=r"another config \(lr: 0.003 -> 0.001\).*--fresh"):
        pt.run(other, tmp_path / "resumed", progress=False)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "resumed").rglob("*")} == before
    pt.run(other, tmp_path / "resumed", progress=False, fresh=True)  # --fresh: the old runs deleted, new ones
    assert json.loads((tmp_path / "resumed" / "config.json").read_text())["lr"] == 1e-3
