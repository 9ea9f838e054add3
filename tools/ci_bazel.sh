#!/usr/bin/env bash
# CI: `bazel test //...` on this checkout, offline, with Debian's Bazel.
#
# Installs bazel-bootstrap (Bazel 4.2.3) from Debian's packages if `bazel` is
# missing, then builds every target and runs every test. Needs no network
# beyond the Debian mirror: WORKSPACE replaces all downloads with folders of
# this repository, and the Python toolchain is the machine's interpreter with
# the packages `pip install -e .[test]` installed (see tools/bazel_env.sh).
#
# Arguments go to `bazel test` (e.g. --test_output=all). PYTHON_BIN_PATH picks
# the interpreter (default: python3 on PATH).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v bazel >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  sudo=""
  if [[ "$(id -u)" != 0 ]]; then sudo="sudo"; fi
  ${sudo} apt-get update -qq
  ${sudo} apt-get install -y -qq --no-install-recommends bazel-bootstrap \
    >/dev/null
fi

# Fail early, with a readable message, if the interpreter lacks the packages.
bash tools/bazel_env.sh

# Re-detect the interpreter and its packages (@local_python): a package
# upgraded since the last run then invalidates the cached test results.
bazel sync --configure

status=0
# --config=ci: at most 2 jobs and 2 test processes (see .bazelrc).
bazel test --config=ci "$@" //... || status=$?
# Free the Bazel server's memory now rather than after its idle timeout.
bazel shutdown
exit "${status}"
