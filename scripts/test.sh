#!/usr/bin/env bash
# The whole test suite, on a fresh machine: creates .venv, installs runlens with its test extras, runs pytest
# with every test selected (slow ones included; CI calls this through .ci/run).
#
# The fast run while editing leaves the slow tests out (pyproject's addopts does that for a plain pytest):
#   .venv/bin/python -m pytest            # or: .venv/bin/python -m pytest tests/store -x
#   .venv/bin/python -m pytest -m slow    # only the slow ones
# Arguments are passed on; a later -m replaces the one here.
source "$(dirname "$0")/_venv.sh" "test,torch,transformers,lightning"
exec python -m pytest -m "slow or not slow" "$@"
