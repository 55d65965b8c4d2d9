"""The `lawa` command line: click groups whose commands are imported only when run.

The library's own commands (``lawa average``, ``lawa fairseq-user-dir``) live in this package.
Other installed packages add theirs through the entry-point group ``lawa.commands`` (the
benchmarks register ``lawa bench`` and ``lawa report`` there in ``pyproject.toml``), so the
library names none of them. Every command is imported when it is looked up, so ``lawa --help``
stays fast and a command's heavy imports (torchvision, fairseq, matplotlib) happen only when that
command is used.

A command whose module needs a package that is not installed still shows in ``--help`` (with what
it needs), and running it is a one-line error naming the missing package and the ``pip install``
that brings it: the extra of its entry point (``bench = "<module>:bench [bench]"`` gives
``pip install 'lawa-optim[bench]'``), or the ``install_hint`` of the :class:`LazyGroup` it is in.
"""

from __future__ import annotations

import importlib
from importlib import metadata

import click

__all__ = ["ENTRY_POINT_GROUP", "LazyGroup", "main", "name_missing_packages"]

ENTRY_POINT_GROUP = "lawa.commands"

# The library's own commands: name -> "module:attribute".
_COMMANDS: dict[str, str] = {
    "average": "lawa_optim.cli.average:average",
    "fairseq-user-dir": "lawa_optim.cli.fairseq:fairseq_user_dir",
}


def _missing_command(name: str, missing: str, hint: str, err: ModuleNotFoundError) -> click.Command:
    """A stand-in for a command whose module needs ``missing``: listed in --help, an error when run."""
    needs = f"needs {missing}, which is not installed: {hint}"

    def fail(*_args, **_kwargs) -> None:
        raise click.ClickException(f"`{name}` {needs}") from err

    return click.Command(name.split()[-1], callback=fail, help=f"(Not available: {needs}.)",
                         context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                           "help_option_names": []})


def name_missing_packages(command: click.Command, install_hint: str, requires: tuple[str, ...]) -> click.Command:
    """``command``, whose run names ``install_hint`` when it fails importing one of ``requires``.

    For a command that imports its dependencies when it runs (e.g. matplotlib only to draw):
    ``requires`` are the top-level modules the hint installs; any other missing module is raised
    as is (a bug, or another extra's package, which the command names itself).
    """
    invoke = command.invoke
    if getattr(invoke, "names_missing", False):
        return command  # wrapped already

    def invoke_naming_missing(ctx: click.Context):
        try:
            return invoke(ctx)
        except ModuleNotFoundError as err:
            missing = (err.name or "").split(".")[0]
            if missing not in requires:
                raise
            raise click.ClickException(
                f"`{ctx.command_path}` needs {missing}, which is not installed: {install_hint}") from err

    invoke_naming_missing.names_missing = True
    command.invoke = invoke_naming_missing
    return command


def _load(spec: str) -> click.Command:
    module, attr = spec.split(":")
    return getattr(importlib.import_module(module), attr)


class LazyGroup(click.Group):
    """A click group that imports a command's module when the command is looked up.

    Args:
        lazy: command name -> ``"module:attribute"`` of its click command.
        install_hint: what to run when a lazy command's module needs a package that is not
            installed (e.g. ``"pip install 'lawa-optim[bench]'"``). Without one, or when the
            module missing is of the command's own top-level package (a bug), the error is raised as is.
        requires: the top-level modules ``install_hint`` installs: a command that fails importing
            one of them when it runs names the hint too (see :func:`name_missing_packages`).
    """

    def __init__(self, *args, lazy: dict[str, str] | None = None, install_hint: str | None = None,
                 requires: tuple[str, ...] = (), **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})
        self.install_hint = install_hint
        self.requires = tuple(requires)

    def _specs(self) -> dict[str, tuple[str, str | None]]:
        """name -> ("module:attribute", install hint) of every lazy command."""
        return {name: (spec, self.install_hint) for name, spec in self.lazy.items()}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self._specs()))

    def _spec(self, name: str) -> tuple[str, str | None] | None:
        """("module:attribute", install hint) of the lazy command ``name``, if there is one."""
        return self._specs().get(name)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        found = self._spec(name)
        if found is None:
            return super().get_command(ctx, name)
        spec, hint = found
        try:
            command = _load(spec)
        except ModuleNotFoundError as err:
            missing = (err.name or "").split(".")[0]
            if hint is None or not missing or missing == spec.split(".")[0]:
                raise  # no extra brings it (the library's own dependencies are always installed), or a bug of ours
            return _missing_command(f"{ctx.command_path} {name}", missing, hint, err)
        if hint is not None and self.requires and name in self.lazy:
            command = name_missing_packages(command, hint, self.requires)
        return command


def _entry_points() -> list[metadata.EntryPoint]:
    return list(metadata.entry_points(group=ENTRY_POINT_GROUP))


class _MainGroup(LazyGroup):
    """The `lawa` group: the library's commands plus those registered in ``lawa.commands``."""

    def _specs(self) -> dict[str, tuple[str, str | None]]:
        specs = super()._specs()
        for ep in _entry_points():
            if ep.name in specs:
                continue  # the library's own command wins over a plugin of the same name
            hint = None
            if ep.extras and ep.dist is not None:
                hint = f"pip install '{ep.dist.name}[{','.join(ep.extras)}]'"
            specs[ep.name] = (ep.value.split("[")[0].strip(), hint)
        return specs

    def _spec(self, name: str) -> tuple[str, str | None] | None:
        if name in self.lazy:  # the library's own command: no scan of every installed package's entry points
            return self.lazy[name], self.install_hint
        return super()._spec(name)


@click.group(
    cls=_MainGroup,
    lazy=_COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="""\b
Examples:
  lawa bench resnet --config quick --out runs/quick
  lawa report runs/quick
  lawa average --sort --last 6 ckpts/checkpoint[0-9]*.pt --out ckpts/checkpoint_lawa.pt
  fairseq-train DATA --user-dir "$(lawa fairseq-user-dir)" --task masked_lm_lawa ...
""",
)
@click.version_option(package_name="lawa-optim")
def main() -> None:
    """lawa: tools, benchmarks and reports for LAtest Weight Averaging."""
