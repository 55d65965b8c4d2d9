"""``python -m lawa_optim.cli`` is the ``lawa`` command."""

from . import main

main()
