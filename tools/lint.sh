#!/usr/bin/env bash
# The linter and the formatter over the tree: `tools/lint.sh` fixes the
# formatting in place, `tools/lint.sh --check` (CI) only reports. Both need
# `pip install -e ".[lint]"`.
set -euo pipefail
cd "$(dirname "$0")/.."

paths=(alberta scripts tests third_party/alberta_framework tools docs/api setup.py)
# pyink's options are haiku's and optax's (their pyproject.toml [tool.pyink]).
pyink_flags=(--pyink-indentation=2 --line-length=80 --pyink-use-majority-quotes
             --unstable)
if [[ "${1:-}" == "--check" ]]; then
  pyink "${pyink_flags[@]}" --check --diff --quiet "${paths[@]}"
  ruff check "${paths[@]}"
else
  pyink "${pyink_flags[@]}" --quiet "${paths[@]}"
  ruff check --fix "${paths[@]}"
fi
