"""The soak benchmark, short (issue 7): many snapshots, the average exact, memory flat, resumable."""

from __future__ import annotations

import json

import pytest

from lawa_benchmarks.soak import SoakConfig, run

SHORT = dict(steps=1500, period=3, k=4, width=16, check_every=25, rss_every=50)


@pytest.mark.slow
def test_short_soak_is_exact_and_flat_and_resumes_to_the_same_numbers(tmp_path):
    straight = run(SoakConfig(**SHORT, checkpoint_every=0), tmp_path / "straight")
    assert straight["snapshots"] == 500 and straight["num_snapshots_held"] == 4
    assert straight["checks"] == 21  # every 25 snapshots, and at the end
    assert straight["exact"] and straight["max_rel_error"] <= 1e-6
    assert straight["memory_flat"], straight
    written = json.loads((tmp_path / "straight" / "soak.json").read_text())
    assert written["max_rel_error"] == straight["max_rel_error"]
    assert (tmp_path / "straight" / "soak_rss.csv").read_text().startswith("step,rss_bytes\n")
    # Interrupted at step 850 (last checkpoint: 750), then run again in the same folder.
    cfg = SoakConfig(**SHORT, checkpoint_every=250)
    assert run(SoakConfig(**SHORT, checkpoint_every=250, stop_after=850), tmp_path / "resumed") == {
        "finished": False, "step": 850}
    resumed = run(cfg, tmp_path / "resumed")
    assert resumed["resumed_at_steps"] == [750]
    assert resumed["final_average_sum"] == straight["final_average_sum"]  # bit-identical average
    assert resumed["snapshots"] == straight["snapshots"] and resumed["exact"]


def test_bad_config_lists_every_error():
    with pytest.raises(ValueError, match=r"steps=0.*period=-1"):
        run(SoakConfig(steps=0, period=-1), "unused")


def test_a_folder_holding_another_soak_is_refused(tmp_path):
    run(SoakConfig(**SHORT | {"steps": 300}, checkpoint_every=100), tmp_path)
    with pytest.raises(ValueError, match="another config"):
        run(SoakConfig(**SHORT | {"steps": 300, "k": 3}, checkpoint_every=100), tmp_path)


@pytest.mark.slow
def test_sigkill_at_random_moments_never_leaves_a_broken_checkpoint(tmp_path):
    """Six SIGKILLs of a forked soak at random moments (each just after the attempt wrote a new
    checkpoint, within the next interval, so a kill may land mid-write): the checkpoint is always
    absent or whole, and the run resumed after the last kill ends with the uninterrupted run's
    average, bit for bit."""
    import multiprocessing
    import os
    import random
    import signal
    import time

    from lawa_optim import safe_load

    cfg = SoakConfig(**SHORT, checkpoint_every=50)
    straight = run(cfg, tmp_path / "straight")
    out = tmp_path / "killed"
    ctx = multiprocessing.get_context("fork")
    rng = random.Random(0)
    steps_seen, kills = [], 0
    while kills < 6:
        ckpt = out / "soak_ckpt.pt"
        last = ckpt.stat().st_mtime_ns if ckpt.exists() else 0
        child = ctx.Process(target=run, args=(cfg, out))
        child.start()
        # Kill once this attempt has written a new checkpoint, after a random moment more: the
        # kills land mid-run (some mid-write) whatever the machine's speed.
        while child.is_alive() and (not ckpt.exists() or ckpt.stat().st_mtime_ns == last):
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 0.05))
        os.kill(child.pid, signal.SIGKILL)  # our own child, by its pid
        child.join()
        if child.exitcode != -signal.SIGKILL:
            break  # it finished before the kill: the run is complete
        kills += 1
        if ckpt.exists():  # never truncated: it loads, and holds a step at a checkpoint boundary
            step = safe_load(ckpt)["state"]["step"]
            assert step % 50 == 0
            steps_seen.append(step)
    assert kills == 6, f"only {kills} kills landed before the run finished"
    assert steps_seen == sorted(steps_seen)  # progress is never lost
    resumed = run(cfg, out)
    assert resumed["final_average_sum"] == straight["final_average_sum"]
    assert resumed["snapshots"] == 500 and resumed["exact"]
    print(f"\nsoak kills: {kills}, checkpoint steps after each kill: {steps_seen}")


@pytest.mark.cli
def test_lawa_bench_soak_command(tmp_path):
    from conftest import require

    require("click", "the lawa command line")
    from click.testing import CliRunner

    from lawa_optim.cli import main

    result = CliRunner().invoke(main, ["bench", "soak", "--out", str(tmp_path), "--steps", "200", "--period", "2",
                                       "--k", "3", "--check-every", "10"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[result.output.rindex('{"steps"'):].splitlines()[0])  # after tqdm's bar
    assert summary["snapshots"] == 100 and summary["exact"]
    assert json.loads((tmp_path / "soak.json").read_text())["snapshots"] == 100
    bad = CliRunner().invoke(main, ["bench", "soak", "--out", str(tmp_path / "x"), "--steps", "0"])
    assert bad.exit_code == 2 and "steps=0" in bad.output
