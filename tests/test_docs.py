"""The documentation site (mkdocs.yml, docs/): it builds in strict mode, and strict mode catches what it must.

``mkdocs build --strict`` fails on a broken link or anchor, a missing image, a docstring target of
the API reference that does not exist, and a docstring mkdocstrings cannot parse (griffe's
warnings). The pages' code blocks are run by ``tests/test_readme.py`` like the README's.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require

ROOT = Path(__file__).resolve().parent.parent
MKDOCS = Path(sys.executable).parent / "mkdocs"


def _build(config: Path, site: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([str(MKDOCS), "build", "--strict", "-f", str(config), "-d", str(site)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(autouse=True)
def _needs_the_docs_extra():
    for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python", "yaml"):
        require(module, "the docs extra: pip install -e '.[docs]'")


@pytest.mark.slow
def test_the_site_builds_in_strict_mode(tmp_path):
    res = _build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert res.returncode == 0, f"mkdocs build --strict failed:\n{res.stdout[-3000:]}\n{res.stderr[-6000:]}"
    # the API reference is generated from the docstrings
    lawa = (tmp_path / "site" / "reference" / "lawa" / "index.html").read_text()
    assert "LAWAWrapper" in lawa and "snapshot" in lawa and "Parameters" in lawa
    assert ":func:" not in lawa and ":class:" not in lawa  # docs/_griffe/sphinx_roles.py turned roles into code
    offline = (tmp_path / "site" / "reference" / "offline" / "index.html").read_text()
    assert "write_average" in offline and "average_checkpoints" in offline
    assert (tmp_path / "site" / "img" / "demo_time_saved.png").is_file()


def _broken_site(tmp_path: Path, page: str) -> Path:
    """The repository's mkdocs.yml pointed at a one-page docs folder holding ``page``."""
    import yaml

    cfg = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text(page)
    cfg.update(docs_dir=str(docs), nav=[{"Home": "index.md"}])
    python = next(p for p in cfg["plugins"] if isinstance(p, dict) and "mkdocstrings" in p)["mkdocstrings"][
        "handlers"]["python"]
    python["paths"] = [str(ROOT)]  # paths in the config are relative to its folder
    python["options"]["extensions"] = [str(ROOT / e) for e in python["options"]["extensions"]]
    config = tmp_path / "mkdocs.yml"
    config.write_text(yaml.safe_dump(cfg))
    return config


@pytest.mark.slow
@pytest.mark.parametrize("page, error", [
    ("# Home\n\nSee [the zoo](zoo.md).\n", "zoo.md"),
    ("# Home\n\nSee [the API](#no-such-heading).\n", "no-such-heading"),
    ("# Home\n\n::: lawa_optim.NoSuchThing\n", "lawa_optim.NoSuchThing"),
], ids=["link", "anchor", "docstring-target"])
def test_strict_mode_fails_on_a_broken_page(tmp_path, page, error):
    res = _build(_broken_site(tmp_path, page), tmp_path / "site")
    assert res.returncode != 0 and error in res.stdout + res.stderr, res.stderr[-3000:]


@pytest.mark.slow
def test_the_broken_site_check_can_pass(tmp_path):
    """The same one-page site without the break builds: the failures above are the breaks, not the set-up."""
    res = _build(_broken_site(tmp_path, "# Home\n\n::: lawa_optim.exp_coefficients\n"), tmp_path / "site")
    assert res.returncode == 0, res.stderr[-3000:]
