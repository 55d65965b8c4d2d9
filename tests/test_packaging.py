"""The package as people install it: a wheel, without extras, in a fresh venv (not the editable install).

Steps: the repository's files (tracked and untracked-but-not-ignored, as a clone has them) are
copied to a temporary folder; ``python -m build`` makes the sdist and, from it, the wheel;
``twine check`` checks both; a fresh ``python -m venv`` gets ``pip install <wheel>`` (no extras,
not editable); then the installed ``lawa`` runs there, from a folder outside the clone.

**Where the fresh venv's torch comes from.** ``pip install`` of torch 2.14.1 into a fresh venv took
2 min 34 s and 5.4 GB on this machine (measured once, CUDA wheels from the package index), on every
run of the test suite. Instead the venv gets a ``.pth`` file naming one folder that holds symlinks
to exactly torch's distribution and the distributions it requires (its dependency closure, read
from the dev venv's metadata): pip sees torch as installed and installs the wheel's own
dependencies (click, tqdm, safetensors, numpy) into the fresh venv from the package index. The folder
holds nothing else, and the test asserts that the venv cannot import lawa_optim, click, tqdm or
safetensors, numpy before the wheel is installed, and that afterwards they come from the venv itself.

The fairseq plugin is checked where fairseq is installed (the dev venv): ``fairseq-train
--user-dir <the installed wheel's folder> --task masked_lm_lawa --help`` must list the plugin's
``--lawa-k``, which only the plugin's import registers.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest
from conftest import require

pytestmark = [pytest.mark.slow, pytest.mark.cli]

ROOT = Path(__file__).resolve().parent.parent
SITE_NAME = "site-packages"


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, check: bool = True,
         timeout: float = 600) -> subprocess.CompletedProcess:
    out = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"{cmd} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return out


def _clone_files(dest: Path) -> None:
    """The repository's files as a clone has them (tracked, plus untracked files git does not ignore)."""
    listed = _run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], ROOT).stdout
    for rel in filter(None, listed.split("\0")):
        src = ROOT / rel
        if src.is_file():  # a tracked file deleted in the working tree is left out, as in a commit of it
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def _closure(name: str) -> list[metadata.Distribution]:
    """``name``'s installed distribution and every distribution it requires on this interpreter."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen: dict[str, metadata.Distribution] = {}
    todo = [name]
    while todo:
        key = canonicalize_name(todo.pop())
        if key in seen:
            continue
        try:
            dist = metadata.distribution(key)
        except metadata.PackageNotFoundError:
            continue  # a requirement this platform does not install
        seen[key] = dist
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return list(seen.values())


def _torch_only_folder(dest: Path) -> list[str]:
    """Symlinks in ``dest`` to the top-level entries of torch's distribution and its requirements."""
    dest.mkdir()
    names = set()
    for dist in _closure("torch"):
        for file in dist.files or []:
            top = file.parts[0]
            if top == ".." or top in names:  # scripts in bin/ are not needed
                continue
            names.add(top)
            (dest / top).symlink_to(Path(dist.locate_file(top)).resolve())
    return sorted(names)


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    require("build", "builds the wheel")
    require("twine", "checks the wheel's metadata")
    tmp = tmp_path_factory.mktemp("build")
    src, out = tmp / "src", tmp / "dist"
    _clone_files(src)
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", out, src], tmp)  # sdist, then wheel from it
    wheels, sdists = list(out.glob("*.whl")), list(out.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, list(out.iterdir())
    check = _run([sys.executable, "-m", "twine", "check", "--strict", *wheels, *sdists], tmp)
    assert check.stdout.count("PASSED") == 2, check.stdout
    return wheels[0]


@pytest.fixture(scope="module")
def venv(tmp_path_factory, dist) -> dict:
    tmp = tmp_path_factory.mktemp("venv")
    env_dir, work = tmp / "venv", tmp / "work"
    work.mkdir()
    _run([sys.executable, "-m", "venv", env_dir], tmp)
    bin_dir = env_dir / "bin"
    python = bin_dir / "python"
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], work).stdout.strip())
    linked = _torch_only_folder(tmp / "torch-only")
    assert not {"lawa_optim", "lawa_benchmarks", "click", "tqdm", "safetensors", "numpy"} & set(linked), linked
    (site / "torch_only.pth").write_text(f"{tmp / 'torch-only'}\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    probe = ("import importlib.util as u; "
             "print([m for m in ('lawa_optim', 'click', 'tqdm', 'safetensors', 'numpy') if u.find_spec(m)])")
    assert _run([python, "-c", probe], work, env).stdout.strip() == "[]"  # nothing of the dev venv leaks in
    _run([python, "-m", "pip", "install", "--no-input", "--disable-pip-version-check", dist], work, env)
    return {"bin": bin_dir, "python": python, "site": site, "work": work, "env": env}


def _in_venv(v: dict, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return _run([v["bin"] / args[0], *args[1:]], v["work"], v["env"], check=check)


def test_the_wheel_installs_the_package_and_its_own_dependencies_into_the_venv(venv):
    code = "import click, lawa_optim, numpy, safetensors, torch, tqdm; print(lawa_optim.__file__, click.__file__)"
    files = [Path(p) for p in _in_venv(venv, "python", "-c", code).stdout.split()]
    assert files[0].is_relative_to(venv["site"]) and files[1].is_relative_to(venv["site"]), files
    assert not files[0].is_relative_to(ROOT)
    missing = "import importlib.util as u; print([m for m in ('yaml', 'pydantic', 'matplotlib') if u.find_spec(m)])"
    assert _in_venv(venv, "python", "-c", missing).stdout.strip() == "[]"  # no extras were installed


def test_lawa_help_and_version_run_with_the_core_dependencies_only(venv):
    out = _in_venv(venv, "lawa", "--help").stdout
    for name in ("average", "bench", "fairseq-user-dir", "report"):
        assert name in out
    assert "0.1.0" in _in_venv(venv, "lawa", "--version").stdout
    assert "resnet" in _in_venv(venv, "lawa", "bench", "--help").stdout


def test_a_benchmark_without_the_bench_extra_says_which_extra_to_install(venv):
    from lawa_benchmarks.metrics import write_metrics

    run = venv["work"] / "runs" / "x"  # a run folder, so that `lawa report` gets as far as its plots
    rows = [{"run": "base", "method": method, "seed": seed, "epoch": epoch, "top1": 70.0 + epoch + gain,
             "val_loss": 1.0 - epoch / 10, "train_loss": 1.0 / epoch, "train_time_s": 10.0 * epoch}
            for method, gain in (("base", 0.0), ("lawa_k6", 1.0)) for seed in (0, 1) for epoch in (1, 2, 3)]
    write_metrics(run, rows, {"baseline": "base", "headline": "lawa_k6", "metric": "top1"})
    for args in (["bench", "resnet", "--config", "quick"], ["bench", "suite", "--quick"], ["report", str(run)]):
        out = _in_venv(venv, "lawa", *args, check=False)
        assert out.returncode == 1, out
        assert "which is not installed: pip install 'lawa-optim[bench]'" in out.stderr, out.stderr
        assert "Traceback" not in out.stderr


def test_lawa_average_on_torch_save_and_safetensors_files(venv):
    work = venv["work"]
    write = textwrap.dedent("""
        import torch
        from safetensors.torch import save_file
        for i in range(3):
            sd = {"w": torch.full((4, 3), float(i)), "b": torch.arange(3.0) * i}
            torch.save(sd, f"ep{i}.pt")
            save_file(sd, f"ep{i}.safetensors")
    """)
    _in_venv(venv, "python", "-c", write)
    _in_venv(venv, "lawa", "average", "ep0.pt", "ep1.pt", "ep2.pt", "--out", "avg.pt", "--quiet")
    _in_venv(venv, "lawa", "average", "ep1.safetensors", "ep2.safetensors", "--out", "avg.safetensors", "--quiet")
    check = textwrap.dedent("""
        import torch
        from safetensors.torch import load_file
        pt, st = torch.load("avg.pt", weights_only=True), load_file("avg.safetensors")
        assert torch.equal(pt["w"], torch.full((4, 3), 1.0)) and torch.equal(pt["b"], torch.arange(3.0)), pt
        assert torch.equal(st["w"], torch.full((4, 3), 1.5)) and torch.equal(st["b"], torch.arange(3.0) * 1.5), st
        print("ok")
    """)
    assert _in_venv(venv, "python", "-c", check).stdout.strip() == "ok"
    assert (work / "avg.pt").is_file()


def test_the_shipped_configs_resolve_outside_a_clone(venv):
    code = textwrap.dedent("""
        from lawa_benchmarks.config_files import config_names, resolve_config
        print(resolve_config("quick")); print(resolve_config("configs/suite.yaml")); print(*config_names())
    """)
    quick, suite, names = _in_venv(venv, "python", "-c", code).stdout.strip().splitlines()
    for path, name in ((Path(quick), "quick.yaml"), (Path(suite), "suite.yaml")):
        assert path.is_relative_to(venv["site"]) and path.read_bytes() == (ROOT / "configs" / name).read_bytes()
    assert names.split() == sorted(p.stem for p in (ROOT / "configs").glob("*.yaml"))


@pytest.mark.fairseq
def test_lawa_fairseq_user_dir_is_installed_and_fairseq_train_imports_the_plugin_from_it(venv):
    folder = Path(_in_venv(venv, "lawa", "fairseq-user-dir").stdout.strip())
    assert folder.is_relative_to(venv["site"]) and folder.name == "lawa_fairseq", folder
    assert (folder / "__init__.py").is_file()
    require("fairseq", "fairseq-train loads the plugin")
    # fairseq-train validates --task before it prints its help: without the plugin imported from the
    # folder, masked_lm_lawa is "invalid choice" (exit code 2)
    fairseq_train = Path(sys.executable).parent / "fairseq-train"
    out = _run([fairseq_train, "--user-dir", folder, "--task", "masked_lm_lawa", "--help"], venv["work"], check=False)
    assert out.returncode == 0 and "invalid choice" not in out.stderr, out.stderr[-2000:]
    # the same import fairseq-train does (fairseq.utils.import_user_module): the plugin comes from the installed folder
    code = textwrap.dedent(f"""
        import argparse, sys
        from fairseq import utils
        from fairseq.tasks import TASK_REGISTRY
        utils.import_user_module(argparse.Namespace(user_dir={str(folder)!r}))
        print(sys.modules["lawa_fairseq"].__file__, "masked_lm_lawa" in TASK_REGISTRY)
    """)
    where, registered = _run([sys.executable, "-c", code], venv["work"]).stdout.split()[-2:]
    assert Path(where) == folder / "__init__.py" and registered == "True"
