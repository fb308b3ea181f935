#!/usr/bin/env bash
# The test command: makes .venv with the test extras if it is missing, lints, runs the suite.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
if ! .venv/bin/python -c 'import markd, pymongocrypt, pytest, hypothesis, ruff' 2>/dev/null; then
  .venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
fi
.venv/bin/ruff check markd tests bench
exec .venv/bin/python -m pytest -q "$@"
