"""lawa_optim.cli: the `lawa` entry point lives in the library; benchmarks load lazily, with advice when missing."""

from __future__ import annotations

import importlib
import subprocess
import sys

from click.testing import CliRunner

from lawa_optim.cli import _COMMANDS, main


def invoke(*args):
    return CliRunner().invoke(main, list(args))


def test_help_lists_the_library_commands_and_bench_lists_every_benchmark_with_examples():
    result = invoke("--help")
    assert result.exit_code == 0, result.output
    for name in ("average", "fairseq-user-dir", "report", "bench"):
        assert name in result.output
    bench = invoke("bench", "--help")
    assert bench.exit_code == 0, bench.output
    for name in _COMMANDS["bench"]:
        assert name in bench.output
    assert "Examples:" in bench.output and "lawa bench soak" in bench.output


def test_every_lazy_command_imports():
    for commands in _COMMANDS.values():
        for spec in commands.values():
            module, attr = spec.split(":")
            assert callable(getattr(importlib.import_module(module), attr)), spec


def test_a_missing_benchmark_dependency_is_a_clear_message(monkeypatch):
    real = importlib.import_module

    def fake(name, *args, **kwargs):
        if name == "lawa_benchmarks.resnet.cli":
            raise ModuleNotFoundError("No module named 'torchvision'", name="torchvision")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", fake)
    result = invoke("bench", "resnet", "--help")
    assert result.exit_code == 1
    assert "torchvision is missing" in result.output and "pip install 'lawa-optim[bench]'" in result.output
    assert "Traceback" not in result.output


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
