"""Packaging glue that pyproject.toml cannot express: the repository's ``benchmarks/`` folder is
installed as ``lawa_benchmarks`` (a name that cannot collide with other projects' packages), and
its top-level ``configs/`` folder as the data folder ``lawa_benchmarks/configs`` (so ``--config
quick`` works outside a clone, while a clone keeps ``configs/`` where its users look for it)."""

from setuptools import find_packages, setup

benchmarks = ["lawa_benchmarks" + name[len("benchmarks"):] for name in find_packages(include=["benchmarks*"])]
setup(
    # fairseq imports a --user-dir by its folder name, so user_dir/ has no __init__.py (it is no package of
    # ours) and find_packages cannot see the plugin package inside it: named here.
    packages=find_packages(include=["lawa_optim*"]) + ["lawa_optim.integrations.fairseq.user_dir.lawa_fairseq"]
    + benchmarks + ["lawa_benchmarks.configs"],
    package_dir={"lawa_benchmarks": "benchmarks", "lawa_benchmarks.configs": "configs"},
    package_data={"lawa_benchmarks.configs": ["*.yaml"]},
)
