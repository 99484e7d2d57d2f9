#!/usr/bin/env bash
# A real demo run end to end: a small CPU training job under `runlens collect`, analysed, HTML report written.
source "$(dirname "$0")/_venv.sh" "torch"
exec runlens demo "$@"
