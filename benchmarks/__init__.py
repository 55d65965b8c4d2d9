"""Runners, reports and the `lawa` command line. No algorithm lives here: see `lawa_optim`."""
