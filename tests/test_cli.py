"""lawa_optim.cli: the `lawa` entry point lives in the library; the benchmarks register their commands through the
entry-point group ``lawa.commands`` and load lazily, with advice when a dependency is missing."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from lawa_benchmarks.cli import BENCHMARKS
from lawa_benchmarks.config_files import config_names
from lawa_optim.cli import _COMMANDS, ENTRY_POINT_GROUP, main

ROOT = Path(__file__).resolve().parent.parent


def invoke(*args):
    return CliRunner().invoke(main, list(args), prog_name="lawa")


def test_help_lists_the_library_commands_and_bench_lists_every_benchmark_with_examples():
    result = invoke("--help")
    assert result.exit_code == 0, result.output
    for name in ("average", "fairseq-user-dir", "report", "bench"):
        assert name in result.output
    bench = invoke("bench", "--help")
    assert bench.exit_code == 0, bench.output
    for name in BENCHMARKS:
        assert name in bench.output and f"lawa bench {name}" in bench.output  # listed, with an example
    assert "Not available" not in result.output + bench.output
    # the help's list of shipped configs is the list of files shipped
    names = " ".join(bench.output.split("--config takes")[1].split(":", 1)[1].split("(configs/")[0].split())
    assert sorted(names.split(", ")) == config_names()


def test_every_lazy_command_imports():
    for spec in [*_COMMANDS.values(), *BENCHMARKS.values()]:
        module, attr = spec.split(":")
        assert callable(getattr(importlib.import_module(module), attr)), spec


def test_the_library_names_no_benchmark_and_the_benchmarks_register_through_entry_points():
    from importlib import metadata

    source = (ROOT / "lawa_optim" / "cli" / "__init__.py").read_text()
    assert "lawa_benchmarks" not in source
    eps = {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}
    assert {"bench", "report"} <= set(eps)
    assert eps["bench"].load() is importlib.import_module("lawa_benchmarks.cli").bench
    assert eps["bench"].extras == ["bench"]


def test_a_missing_benchmark_dependency_is_a_clear_message(monkeypatch):
    real = importlib.import_module

    def fake(name, *args, **kwargs):
        if name == "lawa_benchmarks.resnet.cli":
            raise ModuleNotFoundError("No module named 'torchvision'", name="torchvision")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", fake)
    result = invoke("bench", "resnet", "--help")
    assert result.exit_code == 1
    assert "`lawa bench resnet` needs torchvision, which is not installed: pip install 'lawa-optim[bench]'" in (
        result.output)
    assert "Traceback" not in result.output
    listing = invoke("bench", "--help")  # the others still listed; this one says what it needs
    assert listing.exit_code == 0, listing.output
    assert "resnet" in listing.output and "(Not available: needs torchvision" in listing.output


def test_a_registered_command_whose_extra_is_missing_names_that_extra(monkeypatch, tmp_path):
    real = importlib.import_module

    def fake(name, *args, **kwargs):  # the bench extra missing at import: the entry point's [bench] is named
        if name == "lawa_benchmarks.cli":
            raise ModuleNotFoundError("No module named 'pydantic'", name="pydantic")
        return real(name, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(importlib, "import_module", fake)
        listing = invoke("--help")
        assert listing.exit_code == 0 and "(Not available: needs pydantic" in listing.output, listing.output
        result = invoke("report", str(tmp_path))
        assert result.exit_code == 1
        assert "`lawa report` needs pydantic, which is not installed: pip install 'lawa-optim[bench]'" in result.output

    # ... and missing when it runs (report imports matplotlib to draw): the same advice, no traceback
    import lawa_benchmarks.report

    def no_matplotlib(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'matplotlib'", name="matplotlib")

    monkeypatch.setattr(lawa_benchmarks.report, "write_report", no_matplotlib)
    result = invoke("report", str(tmp_path))
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "`lawa report` needs matplotlib, which is not installed: pip install 'lawa-optim[bench]'" in result.output

    def no_fairseq(*args, **kwargs):  # another extra's package: not disguised as the bench extra's
        raise ModuleNotFoundError("No module named 'fairseq'", name="fairseq")

    monkeypatch.setattr(lawa_benchmarks.report, "write_report", no_fairseq)
    assert isinstance(invoke("report", str(tmp_path)).exception, ModuleNotFoundError)


def test_a_missing_module_inside_the_library_is_not_disguised(monkeypatch):
    real = importlib.import_module

    def fake(name, *args, **kwargs):
        if name == "lawa_optim.cli.average":
            raise ModuleNotFoundError("No module named 'nope'", name="nope")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", fake)
    result = invoke("average", "--help")
    assert isinstance(result.exception, ModuleNotFoundError)


def test_python_m_lawa_optim_cli_is_the_lawa_command_and_import_lawa_optim_stays_light():
    out = subprocess.run([sys.executable, "-m", "lawa_optim.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and "version" in out.stdout
    code = ("import sys, lawa_optim; "
            "print(sorted(m for m in ('click', 'lawa_benchmarks', 'torchvision') if m in sys.modules))")
    light = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert light.returncode == 0, light.stderr
    assert light.stdout.strip() == "[]"


def test_the_benchmarks_are_installed_under_a_name_that_cannot_collide(tmp_path):
    # Outside the repository (no checkout on sys.path), only the installed names are importable.
    code = ("import importlib.util as u; "
            "print(u.find_spec('benchmarks') is None, u.find_spec('lawa_benchmarks.resnet.runner') is not None)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True"]


def test_config_a_file_or_a_shipped_name_and_the_clone_paths_work_anywhere(tmp_path, monkeypatch):
    from lawa_benchmarks.config_files import resolve_config, shipped_configs

    assert shipped_configs() == ROOT / "configs"  # the editable install's: the clone's folder
    monkeypatch.chdir(tmp_path)  # outside the clone
    for given in ("quick", "quick.yaml", "configs/quick.yaml"):
        assert resolve_config(given) == ROOT / "configs" / "quick.yaml", given
    mine = tmp_path / "configs" / "quick.yaml"  # a file of the user's wins over the shipped one
    mine.parent.mkdir()
    mine.write_text("seeds: 1\n")
    assert resolve_config("configs/quick.yaml") == Path("configs/quick.yaml")
    assert resolve_config(mine) == mine
    for bad in ("nope", "configs/nope.yaml", "elsewhere/quick.yaml"):
        with pytest.raises(FileNotFoundError, match=rf"{bad!r} does not exist.*shipped config: pretrain, quick"):
            resolve_config(bad)
    result = invoke("bench", "resnet", "--config", "nope", "--out", str(tmp_path / "o"))
    assert result.exit_code == 2 and "'nope' does not exist" in result.output and "quick, repro" in result.output
    assert not (tmp_path / "o").exists()


def _every_command(cmd, ctx, path):
    yield path, cmd
    if isinstance(cmd, click.Group):
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            yield from _every_command(sub, click.Context(sub, info_name=name, parent=ctx), f"{path} {name}")


def test_every_option_of_every_command_says_what_it_does_and_no_help_points_at_the_issue_tracker():
    found = list(_every_command(main, click.Context(main, info_name="lawa"), "lawa"))
    assert {"lawa average", "lawa bench beyond", "lawa bench suite", "lawa report"} <= {p for p, _ in found}
    undocumented = [f"{path} {p.opts[0]}" for path, cmd in found for p in cmd.params
                    if isinstance(p, click.Option) and not p.help]
    assert undocumented == []
    for path, cmd in found:
        text = " ".join([cmd.help or "", cmd.epilog or "", *(getattr(p, "help", None) or "" for p in cmd.params)])
        assert "issue" not in text.lower(), path
