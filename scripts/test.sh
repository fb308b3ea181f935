#!/usr/bin/env bash
# The test command: makes .venv with the test extras if it is missing, lints, runs the suite.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
if ! .venv/bin/python -c 'import importlib.metadata as m, markd, pymongocrypt, pytest, hypothesis, ruff; m.version("markd-cryptd")' 2>/dev/null; then
  # A venv made before the distribution was renamed holds this checkout as "markd": replace it.
  .venv/bin/pip uninstall -q -y --disable-pip-version-check markd >/dev/null 2>&1 || true
  .venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
fi
# Django MongoDB Backend's encryption support (>= 6.0.1) declares Python >= 3.12 but runs on 3.10+;
# on older Pythons pip needs to be told, or the Django end-to-end test skips.
if ! .venv/bin/python -c 'from importlib.metadata import version as v; assert int(v("django-mongodb-backend").split(".")[0]) >= 6' 2>/dev/null; then
  .venv/bin/pip install -q --disable-pip-version-check --ignore-requires-python 'django-mongodb-backend[encryption]>=6.0.1'
fi
# The in-process library (markd/crypt_shared/mongo_crypt_v1.so) is built by the editable install:
# build it again when it is missing or older than what it is built from.
stamp=markd/crypt_shared/mongo_crypt_v1.so
[ -e "$stamp" ] || stamp=markd/crypt_shared/BUILD-FAILED.txt
for source in setup.py markd/__init__.py markd/commands.py markd/crypt_shared/build.py markd/crypt_shared/mongo_crypt_v1.c; do
  if [ "$source" -nt "$stamp" ]; then
    .venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
    break
  fi
done
.venv/bin/ruff check markd tests bench examples setup.py
exec .venv/bin/python -m pytest -q "$@"
