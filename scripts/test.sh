#!/usr/bin/env bash
# The whole test suite, on a fresh machine: creates .venv, installs runlens with its test extras, runs pytest.
source "$(dirname "$0")/_venv.sh" "test,torch,transformers,lightning"
exec python -m pytest "$@"
