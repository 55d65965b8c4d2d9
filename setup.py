"""Packaging glue that pyproject.toml cannot express: the repository's ``benchmarks/`` folder is
installed as ``lawa_benchmarks`` (a name that cannot collide with other projects' packages)."""

from setuptools import find_packages, setup

benchmarks = ["lawa_benchmarks" + name[len("benchmarks"):] for name in find_packages(include=["benchmarks*"])]
setup(
    packages=find_packages(include=["lawa_optim*"]) + benchmarks,
    package_dir={"lawa_benchmarks": "benchmarks"},
)
