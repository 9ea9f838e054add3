#!/usr/bin/env bash
# Prints the machine-dependent Python settings of the Bazel build, one
# KEY=VALUE per line:
#
#   PYTHON_BIN            the interpreter tests and binaries run with
#   PYTHON_SITE_PACKAGES  its site-packages folders, ':'-separated
#   PYTHON_PACKAGES_HASH  a hash of its version and installed distributions:
#                         it changes when a package is upgraded, so Bazel
#                         reruns the tests instead of reusing cached results
#
# The interpreter is $PYTHON_BIN_PATH if set, else `python3` on PATH. It is
# asked for its own sys.executable, so a pyenv shim or a wrapper resolves to the
# real binary (the shim needs a HOME that Bazel's sandbox does not give tests),
# while a virtualenv's bin/python is kept as it is (resolving its symlink would
# lose the virtualenv's site-packages).
#
# WORKSPACE's @local_python repository runs this script to build its Python
# toolchain; run it by hand to see what Bazel will use. To switch interpreters:
#   PYTHON_BIN_PATH=/path/to/python3 bazel test //...
set -euo pipefail

python="${PYTHON_BIN_PATH:-}"
if [[ -z "${python}" ]]; then
  python="$(command -v python3 || command -v python || true)"
fi
if [[ -z "${python}" ]]; then
  echo "bazel_env.sh: no python3 on PATH; set PYTHON_BIN_PATH" >&2
  exit 1
fi

"${python}" - <<'PY'
import hashlib
import importlib.metadata
import importlib.util
import os
import site
import sys

dirs = list(site.getsitepackages())
if site.ENABLE_USER_SITE:
  dirs.append(site.getusersitepackages())
dirs = [d for d in dict.fromkeys(dirs) if os.path.isdir(d)]
print(f"PYTHON_BIN={sys.executable}")
print(f"PYTHON_SITE_PACKAGES={':'.join(dirs)}")
dists = sorted(f"{d.metadata['Name']}=={d.version}"
               for d in importlib.metadata.distributions())
digest = hashlib.sha256("\n".join([sys.version, *dists]).encode())
print(f"PYTHON_PACKAGES_HASH={digest.hexdigest()[:16]}")

# The build needs the library's dependencies in this interpreter: fail here,
# with the remedy, rather than with an ImportError in every test log.
missing = [m for m in ("absl", "chex", "haiku", "jax", "numpy")
           if importlib.util.find_spec(m) is None]
if missing:
  print(f"bazel_env.sh: {sys.executable} lacks {', '.join(missing)}; "
        "run `pip install -e .[test]` with it or set PYTHON_BIN_PATH",
        file=sys.stderr)
  sys.exit(1)
PY
