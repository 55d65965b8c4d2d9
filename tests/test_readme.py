"""The README and the documentation pages as a new user runs them: every ```python block executed, every example
command of the ```bash blocks run.

The convention (also in CONTRIBUTING.md): **every fenced ``python`` and ``bash`` block of README.md
and of the pages under docs/ runs by default.** A block that cannot run here is opted out with an
HTML comment on the line right before its opening fence, and the reason is required::

    <!-- readme-test: skip (needs a GPU) -->

- ``python`` blocks run one by one, each in a fresh namespace holding :func:`_preamble`'s names
  (``torch``, ``nn``, a tiny ``model``, ``train_loader``, ``loss_fn``, ``evaluate``, ``epochs``),
  in a temporary working folder. A block that needs more must build it itself (or opt out).
- ``bash`` blocks: each command (continuation lines joined, trailing ``# comments`` dropped) is
  matched against :data:`RULES`, which says how it runs here: as written with small overrides
  appended where the real run is long (``lawa bench resnet ... train.epochs=1``), as written with
  ``--help`` appended for the long ones (the options still have to parse), in a slow test of its
  own (``torchrun``; ``fairseq-validate`` runs in ``test_roberta_runner`` on the run it trains), or
  as a template (a ``...`` or ``<placeholder>`` in it). A command no rule knows fails the test:
  add a rule, or opt the block out.

The commands of each file's blocks run in that file's order in one temporary folder of its own
(``configs/`` linked in), as a reader of that page would run them, so a command that collides
with an earlier one's run folder fails here as it would for that reader.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.conftest import require

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BIN = Path(sys.executable).parent
_SKIP = re.compile(r"<!--\s*readme-test:\s*skip\b(.*?)-->")


def doc_files() -> list[Path]:
    """README.md, then every Markdown page of the documentation site (docs/, sorted), reference pages included."""
    return [README] + sorted((ROOT / "docs").rglob("*.md"))


def _name(path: Path) -> str:
    return str(path.relative_to(ROOT))

# Small overrides for `lawa bench resnet` (a key the command sets itself is left as written).
TINY_RESNET = {"threads": "1", "seeds": "1", "data.train_images": "128", "data.val_images": "64",
               "data.train_eval_images": "32", "data.bn_images": "32", "data.batch_size": "32",
               "data.eval_batch_size": "64", "model.width": "4", "train.epochs": "1"}


@dataclass
class Block:
    lang: str
    code: str
    line: int  # 1-based line of the opening fence
    skip: str | None  # the reason given in the marker, or None
    file: str = "README.md"  # the file, relative to the repository root


def readme_blocks(text: str | None = None, path: Path = README) -> list[Block]:
    """Every fenced block of ``path`` (default: the README), with the skip marker right before it (if any)."""
    lines = (path.read_text() if text is None else text).splitlines()
    out, i = [], 0
    while i < len(lines):
        m = re.match(r"^```(\w*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        j = next(k for k in range(i + 1, len(lines)) if lines[k].startswith("```"))
        prev = next((lines[k] for k in range(i - 1, -1, -1) if lines[k].strip()), "")
        marker = _SKIP.search(prev)
        skip = None
        if marker:
            reason = re.fullmatch(r"\s*\((.+)\)\s*", marker.group(1))
            if reason is None:
                raise ValueError(f"{path.name} line {i}: a readme-test skip marker needs a reason: "
                                 "<!-- readme-test: skip (why) -->")
            skip = reason.group(1)
        out.append(Block(m.group(1), "\n".join(lines[i + 1 : j]), i + 1, skip, path.name if path == README
                         else _name(path)))
        i = j + 1
    return out


def doc_blocks() -> list[Block]:
    """The blocks of README.md and of every documentation page, file by file."""
    return [b for path in doc_files() for b in readme_blocks(path=path)]


def _strip_comment(line: str) -> str:
    """``line`` without a trailing ``# comment`` (a ``#`` inside quotes is kept)."""
    quote = None
    for n, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch == "#" and (n == 0 or line[n - 1].isspace()):
            return line[:n].rstrip()
    return line.rstrip()


def bash_commands(block: Block) -> list[str]:
    """The commands of a bash block: continuation lines joined, comments and blank lines dropped."""
    cmds, current = [], ""
    for raw in block.code.splitlines():
        line = _strip_comment(raw) if not raw.rstrip().endswith("\\") else raw.rstrip()[:-1]
        current += (" " if current else "") + line.strip()
        if raw.rstrip().endswith("\\"):
            continue
        if current:
            cmds.append(current)
        current = ""
    return cmds


# (pattern, how): "run" as written (+ extra arguments), "help" (--help appended: the options must
# parse), "make" (the target exists: make -n), "slow" (its own test), "template" (not runnable).
RULES: list[tuple[str, str, str]] = [
    (r"\.\.\.|<[^>]+>", "template", ""),
    (r"^make \w+$", "make", ""),
    (r"^lawa bench resnet ", "run", "resnet"),
    (r"^torchrun .*lawa\)? bench resnet ", "slow", "test_readme_torchrun_command"),
    (r"^lawa report ", "run", ""),
    (r"^lawa bench roberta ", "help", ""),
    (r"^lawa bench suite ", "help", ""),  # about an hour; tests/test_suite.py runs every workload end to end
    (r"^lawa bench overhead ", "run", "--sizes 1e4 --k 2,3,4 --repeats 1 --large-repeats 1 --no-models"),
    (r"^lawa bench soak ", "run", "--steps 200 --check-every 2"),
    (r"^lawa average ", "run", ""),
    (r"^fairseq-validate ", "slow", "test_roberta_runner"),
]


def classify(cmd: str) -> tuple[str, str]:
    for pattern, how, extra in RULES:
        if re.search(pattern, cmd):
            return how, extra
    raise AssertionError(f"README command not known to tests/test_readme.py: {cmd!r}; add a rule to RULES "
                         "(run it, run --help, or give it a slow test), or opt its block out with "
                         "<!-- readme-test: skip (why) -->")


def readme_commands(prefix: str) -> list[str]:
    """The commands of README.md and the documentation pages (of blocks not opted out) that start with ``prefix``."""
    return [c for b in doc_blocks() if b.lang == "bash" and b.skip is None
            for c in bash_commands(b) if c.startswith(prefix)]


def _resnet_args(cmd: str) -> str:
    words = shlex.split(cmd)
    given = {w.split("=", 1)[0] for w in words if "=" in w and not w.startswith("-")}
    if "--seeds" in words:
        given.add("seeds")
    extra = [f"{k}={v}" for k, v in TINY_RESNET.items() if k not in given]
    return cmd + " --no-progress " + " ".join(extra)


def shell_env() -> dict[str, str]:
    """The environment of a user whose PATH starts with the venv's bin (lawa, fairseq-*, torchrun)."""
    env = dict(os.environ)
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


def run_shell(cmd: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", cmd], cwd=cwd, env=shell_env(), capture_output=True, text=True,
                          timeout=timeout)


# ------------------------------------------------------------------------------ the parser itself
def test_blocks_markers_and_commands_are_parsed():
    text = ("x\n```python\na = 1\n```\n\n<!-- readme-test: skip (needs a GPU) -->\n\n```bash\nlawa report r  # c\n"
            "fairseq-train d \\\n  --lr 1 # note\n```\n<!-- readme-test: skip -->\n```python\n```\n")
    with pytest.raises(ValueError, match="needs a reason"):
        readme_blocks(text)
    blocks = readme_blocks(text.rsplit("<!--", 1)[0])
    assert [(b.lang, b.line, b.skip) for b in blocks] == [("python", 2, None), ("bash", 8, "needs a GPU")]
    assert bash_commands(blocks[1]) == ["lawa report r", "fairseq-train d --lr 1"]
    assert _strip_comment('echo "a # b" # c') == 'echo "a # b"'
    assert classify("fairseq-train DATA --lawa-k 10 ...")[0] == "template"
    with pytest.raises(AssertionError, match="not known"):
        classify("rm -rf /")


def test_every_readme_command_has_a_rule():
    blocks = [b for b in doc_blocks() if b.lang == "bash" and b.skip is None]
    assert any(b.file == "README.md" for b in blocks), "README.md has no bash block"
    for b in blocks:
        for cmd in bash_commands(b):
            try:
                classify(cmd)
            except AssertionError as err:
                raise AssertionError(f"{b.file} line {b.line}: {err}") from None


def test_the_main_commands_are_documented_and_run():
    """The demo's run, `lawa report` and `lawa average` stay in a page whose commands the slow test runs."""
    commands = [c for b in doc_blocks() if b.lang == "bash" and b.skip is None for c in bash_commands(b)]
    for prefix in ("lawa bench resnet --config configs/quick.yaml", "lawa report ", "lawa average "):
        assert any(c.startswith(prefix) and classify(c)[0] == "run" for c in commands), prefix


def test_no_file_refers_to_files_outside_the_repository():
    """The project's own files never point at the design notes or folders beside the repository."""
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    bad = []
    for name in tracked:
        path = ROOT / name
        if path.suffix not in (".py", ".md", ".yaml", ".yml", ".toml", ".cfg", ".sh", ".txt") or not path.is_file():
            continue
        if path.resolve() != Path(__file__).resolve() and re.search(r"DESIGN\.md|\.\./shared/", path.read_text()):
            bad.append(name)
    assert not bad, f"files refer to DESIGN.md or ../shared outside the repository: {bad}"


# ------------------------------------------------------------------------------ python blocks
def _preamble(seed: int = 0, evaluate=None) -> dict:
    """What a README snippet may assume: a tiny BatchNorm + dropout classifier and a shuffling loader."""
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(123)
    x, y = torch.randn(96, 8, generator=g), torch.randint(0, 3, (96,), generator=g)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3))
    scores = []

    def _evaluate(m):
        m.eval()
        with torch.no_grad():
            scores.append((m(x).argmax(1) == y).float().mean().item())
        m.train()
        return scores[-1]

    return {"torch": torch, "nn": nn, "model": model, "loss_fn": nn.CrossEntropyLoss(), "epochs": 5,
            "train_loader": DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True),
            "evaluate": evaluate or _evaluate, "scores": scores}


PY_BLOCKS = [b for b in doc_blocks() if b.lang == "python"]
# Blocks that opt out (the marker's reason says where they are exercised instead) are not collected,
# so that CI never shows a skipped test; readme_blocks() refuses a marker without a reason.
RUN_BLOCKS = [b for b in PY_BLOCKS if b.skip is None]


@pytest.mark.parametrize("block", RUN_BLOCKS, ids=[f"{b.file}:line{b.line}" for b in RUN_BLOCKS])
def test_python_block_runs(block, tmp_path, monkeypatch, one_thread):
    monkeypatch.chdir(tmp_path)
    try:
        exec(compile(block.code, f"{block.file}:{block.line}", "exec"), _preamble())
    except ModuleNotFoundError as err:  # an optional dependency: skips outside CI, fails in CI
        require(err.name or str(err), f"{block.file} line {block.line}")
        raise


def _quickstart() -> Block:
    return next(b for b in PY_BLOCKS if b.file == "README.md" and "LAWAWrapper(" in b.code and "ckpt.pt" in b.code)


class _Killed(Exception):
    pass


def _run_quickstart(code: str, folder: Path, seed: int = 0, kill_at_call: int | None = None) -> dict:
    calls = []
    ns = _preamble(seed)
    inner = ns["evaluate"]

    def evaluate(m):
        calls.append(1)
        if kill_at_call is not None and len(calls) == kill_at_call:
            raise _Killed
        return inner(m)

    ns["evaluate"] = evaluate
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        exec(compile(code, "README.md:Quickstart", "exec"), ns)
    except _Killed:
        pass
    finally:
        os.chdir(cwd)
    return ns


def _equal(a, b) -> bool:
    """Bit-exact equality of nested state dicts (tensors with torch.equal)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_equal(u, v) for u, v in zip(a, b))
    return a == b


def _same(a: dict, b: dict) -> bool:
    """The same weights, buffers, optimizer state (ring included) and scheduler state."""
    return (_equal(a["model"].state_dict(), b["model"].state_dict()) and _equal(a["opt"].state_dict(),
            b["opt"].state_dict()) and _equal(a["sched"].state_dict(), b["sched"].state_dict()))


def test_quickstart_resumes_exactly_as_written(tmp_path, one_thread):
    """Killed after 2 of 5 epochs and run again in fresh objects, it ends bit-identical to an uninterrupted run."""
    code = _quickstart().code
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    whole = _run_quickstart(code, tmp_path / "a")
    assert whole["start"] == 0 and whole["opt"].num_snapshots == 5
    killed = _run_quickstart(code, tmp_path / "b", kill_at_call=5)  # the raw evaluation of epoch 3
    assert torch.load(tmp_path / "b" / "ckpt.pt", weights_only=True)["epoch"] == 2
    resumed = _run_quickstart(code, tmp_path / "b", seed=1)  # fresh model, optimizer, scheduler, loader
    assert resumed["start"] == 2 and killed["start"] == 0
    assert _same(whole, resumed)
    assert resumed["sched"].get_last_lr() == whole["sched"].get_last_lr()
    assert resumed["scores"] == whole["scores"][4:]  # epochs 3-5, raw and averaged weights alike
    with whole["opt"].averaged(), resumed["opt"].averaged():
        assert all(torch.equal(p, q) for p, q in zip(whole["model"].parameters(), resumed["model"].parameters()))


@pytest.mark.parametrize("drop", ['sched.load_state_dict(ckpt["sched"])', 'torch.set_rng_state(ckpt["rng"]); '])
def test_quickstart_resume_check_catches_a_missing_piece(tmp_path, drop, one_thread):
    """The comparison above can fail: without the scheduler's or the RNG's state the resumed run differs."""
    code = _quickstart().code
    assert drop.rstrip("; ") in code
    code = code.replace("; " + drop.rstrip("; "), "").replace(drop, "")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    whole = _run_quickstart(code, tmp_path / "a")
    _run_quickstart(code, tmp_path / "b", kill_at_call=5)
    assert not _same(whole, _run_quickstart(code, tmp_path / "b", seed=1))


# ------------------------------------------------------------------------------ bash blocks
def _workdir(tmp_path: Path) -> Path:
    """A user's folder: configs/ of the repository, and ckpts/ with 8 small checkpoints for `lawa average`."""
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    (tmp_path / "ckpts").mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(1, 9):
        torch.save({"model": {"w": torch.randn(3, 4, generator=g), "b": torch.randn(3, generator=g)}},
                   tmp_path / "ckpts" / f"checkpoint{i}.pt")
    return tmp_path


def _files_with_commands() -> list[Path]:
    return [p for p in doc_files() if any(b.lang == "bash" and b.skip is None and bash_commands(b)
                                          for b in readme_blocks(path=p))]


@pytest.mark.slow
@pytest.mark.cli
@pytest.mark.parametrize("path", _files_with_commands(), ids=_name)
def test_readme_commands_run_as_written(path, tmp_path):
    """Every command of a file's bash blocks, in order, in one folder of its own (small overrides for long runs)."""
    for module in ("click", "yaml", "torchvision", "matplotlib", "tqdm"):
        require(module)
    from lawa_benchmarks.resnet.data import DEFAULT_FASHION_MNIST

    if not (Path(DEFAULT_FASHION_MNIST) / "train-images-idx3-ubyte.gz").is_file():
        require("__fashion_mnist_data__", "apt-get install dataset-fashion-mnist")
    work = _workdir(tmp_path)
    ran = []
    for block in readme_blocks(path=path):
        if block.lang != "bash" or block.skip:
            continue
        for cmd in bash_commands(block):
            how, extra = classify(cmd)
            if how == "make":
                res = subprocess.run(["make", "-n", cmd.split()[1]], cwd=ROOT, capture_output=True, text=True)
            elif how in ("run", "help"):
                full = _resnet_args(cmd) if extra == "resnet" else f"{cmd} {extra}".strip()
                res = run_shell(full + (" --help" if how == "help" else ""), work)
            else:
                continue
            assert res.returncode == 0, f"{block.file} line {block.line}: {cmd!r} failed:\n{res.stdout}\n{res.stderr}"
            ran.append(cmd)
    # what the commands promise
    if any(c.startswith("lawa bench resnet --config configs/quick.yaml --out runs/quick ") for c in ran):
        assert (work / "runs" / "quick" / "report" / "report.md").is_file()
    for average in [c for c in ran if c.startswith("lawa average --sort --last 6 ckpts/checkpoint[0-9]*.pt ")]:
        out = work / shlex.split(average)[shlex.split(average).index("--out") + 1]
        got = torch.load(out, weights_only=True)
        got = got.get("model", got)
        newest6 = [torch.load(work / "ckpts" / f"checkpoint{i}.pt", weights_only=True)["model"] for i in range(3, 9)]
        for key in ("w", "b"):
            ref = torch.stack([sd[key].double() for sd in newest6]).mean(0)  # the float64 reference
            torch.testing.assert_close(got[key].double(), ref, rtol=1e-6, atol=1e-7)


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.cli
def test_readme_torchrun_command(tmp_path):
    """The torchrun line of the README or the pages, 2 CPU processes, tiny: runs, and records the global batch."""
    import json

    for module in ("click", "yaml", "torchvision", "matplotlib", "tqdm"):
        require(module)
    from lawa_benchmarks.resnet.data import DEFAULT_FASHION_MNIST

    if not (Path(DEFAULT_FASHION_MNIST) / "train-images-idx3-ubyte.gz").is_file():
        require("__fashion_mnist_data__", "apt-get install dataset-fashion-mnist")
    cmds = readme_commands("torchrun ")
    assert cmds, "the README lost its torchrun example"
    work = _workdir(tmp_path)
    for cmd in cmds:
        res = run_shell(_resnet_args(cmd) + " --methods lawa", work)
        assert res.returncode == 0, f"{cmd!r} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
        out = shlex.split(cmd)[shlex.split(cmd).index("--out") + 1]
        meta = json.loads((work / out / "metrics.json").read_text())["meta"]
        assert meta["world_size"] == 2 and meta["global_batch_size"] == 2 * int(TINY_RESNET["data.batch_size"])
        assert "2 process(es) x batch 32 = global batch 64" in res.stderr


def test_contributing_commands_point_at_what_exists():
    """CONTRIBUTING.md's commands: the make targets exist, the test files exist, the markers are registered."""
    text = (ROOT / "CONTRIBUTING.md").read_text()
    blocks = [b for b in readme_blocks(text) if b.lang == "bash"]
    commands = [c for b in blocks for c in bash_commands(b)]
    assert commands
    markers = (ROOT / "pyproject.toml").read_text()
    for cmd in commands:
        words = shlex.split(cmd)
        if words[0] == "make":
            res = subprocess.run(["make", "-n", words[1]], cwd=ROOT, capture_output=True, text=True)
            assert res.returncode == 0, f"CONTRIBUTING.md: {cmd!r}: {res.stderr}"
        elif "pytest" in words:
            for w in words:
                if w.startswith("tests/"):
                    assert (ROOT / w).exists(), f"CONTRIBUTING.md: {cmd!r} names {w}, which does not exist"
            args = words[words.index("pytest") + 1 :]
            if "-m" in args:
                for marker in re.findall(r"\w+", args[args.index("-m") + 1]):
                    assert marker in ("not", "and", "or") or f'"{marker}:' in markers or f"'{marker}:" in markers, \
                        f"CONTRIBUTING.md: marker {marker!r} is not registered in pyproject.toml"
        else:
            raise AssertionError(f"CONTRIBUTING.md command not checked by tests/test_readme.py: {cmd!r}")
