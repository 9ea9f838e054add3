"""Shared test helpers: matrix comparisons, bit views, temp dirs, the slow gate.

Also the statistical tests' common pieces (`ALPHA`, `zeros_per_row`,
`binomial_two_sided_p`) and the numpy model of one counter-method round
(`counter_model_round`) that the counter and coordinate tests check against.

Import `tests.env` first (it sets the 8 virtual CPU devices before JAX
starts); this module imports JAX.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import tempfile
import unittest

import jax.numpy as jnp
import numpy as np
from scipy import stats

from jax.extend.random import threefry2x32_p

from alberta._src import bits
from alberta._src import counter

try:  # pytest marks slow tests so `-m slow` selects them; Bazel has no pytest.
  import pytest
except ImportError:  # pragma: no cover
  pytest = None

# The repository root: the working directory and PYTHONPATH of the tests'
# subprocesses (scripts, other JAX processes).
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The slow gate. Long tests (sweeps, multi-process runs, big statistical
# samples) run only when this variable is "1": `.ci/run` sets it for its
# second pytest step (`-m slow`), and neither the default pytest run nor
# `bazel test //...` sets it, so no slow test runs twice in CI.
SLOW_ENV = "ALBERTA_SLOW_TESTS"


def slow_tests_enabled() -> bool:
  return os.environ.get(SLOW_ENV) == "1"


def slow(test):
  """Marks a test (function or class) slow: skipped unless `SLOW_ENV=1`."""
  test = unittest.skipUnless(
      slow_tests_enabled(),
      f"slow test: set {SLOW_ENV}=1 to run it (.ci/run does)",
  )(test)
  if pytest is not None:
    test = pytest.mark.slow(test)
  return test


# Every p-value bound of the statistical tests: a correct implementation
# (ideal randomness) fails each such assertion with probability ALPHA for a
# random key. The keys are fixed, so each test always passes or always fails.
ALPHA = 1e-4


def as_bits(x) -> np.ndarray:
  """The bit patterns of a float array, as unsigned ints of the same width.

  bfloat16 and float16 give uint16, float32 uint32, float64 uint64.
  """
  x = np.asarray(x)
  width = {2: np.uint16, 4: np.uint32, 8: np.uint64}[x.dtype.itemsize]
  return x.view(width)


def assert_same_bits(actual, expected, **kwargs) -> None:
  """Equal bit for bit: signed zeros and the last ulp count (`as_bits` of both).

  `kwargs` go to `np.testing.assert_array_equal` (e.g. `err_msg`).
  """
  np.testing.assert_array_equal(as_bits(actual), as_bits(expected), **kwargs)


def as_bits_unsigned_zero(x) -> np.ndarray:
  """float32 bit patterns with -0.0 read as +0.0 (ELL arrays carry no zeros)."""
  x = np.asarray(x)
  if x.dtype == jnp.bfloat16:
    x = x.astype(np.float32)
  return (x.astype(np.float32) + np.float32(0)).view(np.uint32)


def assert_same_matrix(actual, expected, init_type: str) -> None:
  """Same zero pattern (signed zeros included) and the same values.

  Uniform values must match bit for bit. Normal values are held to the
  library's contract, `bits.NORMAL_MAX_ULPS` (XLA may fuse `erf_inv`
  differently in different programs).
  """
  actual = np.asarray(actual)
  expected = np.asarray(expected)
  np.testing.assert_array_equal(actual.shape, expected.shape)
  np.testing.assert_array_equal(actual == 0, expected == 0)
  np.testing.assert_array_equal(np.signbit(actual), np.signbit(expected))
  if init_type == "uniform":
    np.testing.assert_array_equal(as_bits(actual), as_bits(expected))
  else:
    np.testing.assert_array_max_ulp(
        actual, expected, maxulp=bits.NORMAL_MAX_ULPS
    )


def zeros_per_row(matrix) -> np.ndarray:
  """Zeros in each output unit (row) of a matrix, N-D layouts flattened."""
  matrix = np.asarray(matrix).astype(np.float32)
  return (matrix.reshape(matrix.shape[0], -1) == 0).sum(axis=1)


def binomial_two_sided_p(counts, n: int, p: float) -> np.ndarray:
  """Two-sided tail probability of each count under Binomial(n, p)."""
  counts = np.asarray(counts)
  lower = stats.binom.cdf(counts, n, p)
  upper = stats.binom.sf(counts - 1, n, p)
  return np.minimum(1.0, 2 * np.minimum(lower, upper))


def counter_model_round(x: np.ndarray, k_value, a, b, n: int) -> np.ndarray:
  """One round of the counter method's shuffle, in numpy int64.

  As `alberta._src.counter` states it: column `x` pairs with
  `partner = (K - x) mod n` and the two swap when the top bit of
  `a * max(x, partner) + b (mod 2**32)` is set. An independent model of
  `counter.permute` (exact modular arithmetic, no uint32 tricks).
  """
  partner = (np.int64(k_value) - x) % n
  v = np.maximum(x, partner)
  swap = (
      (np.uint64(a) * v.astype(np.uint64) + np.uint64(b)) % np.uint64(1 << 32)
  ) >> np.uint64(31)
  return np.where(swap == 1, partner, x)


def subprocess_env(*pythonpath: str) -> dict[str, str]:
  """This process's environment; `ROOT`, then `pythonpath`, lead PYTHONPATH."""
  env = dict(os.environ)
  path = [ROOT, *pythonpath]
  if env.get("PYTHONPATH"):
    path.append(env["PYTHONPATH"])
  env["PYTHONPATH"] = os.pathsep.join(path)
  return env


def single_device_env() -> dict[str, str]:
  """`subprocess_env()` on the CPU without the suite's 8 virtual devices.

  For subprocesses that choose their device count themselves (the launcher's
  `--num_cpu_devices`, a docs snippet's `jax_num_cpu_devices`), as a user's.
  """
  env = subprocess_env()
  env["JAX_PLATFORMS"] = "cpu"
  env["XLA_FLAGS"] = re.sub(
      r"--xla_force_host_platform_device_count=\d+",
      "",
      env.get("XLA_FLAGS", ""),
  ).strip()
  return env


def free_port() -> int:
  """A TCP port on 127.0.0.1, free a moment ago (for JAX's coordinator)."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def communicate_all(
    procs: list[subprocess.Popen], timeout: float
) -> list[tuple[str, str]]:
  """Each process's (stdout, stderr), in order; none is left running.

  A process still running when another's wait fails (a timeout) is killed.
  """
  try:
    return [proc.communicate(timeout=timeout) for proc in procs]
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
        proc.communicate()


class TempDirMixin:
  """`self.dir`: a fresh temporary directory per test, removed afterwards.

  List it before the TestCase base:
  `class T(TempDirMixin, parameterized.TestCase)`.

  Not absltest's `create_tempdir()`: that needs absl flags, which pytest never
  parses.
  """

  def setUp(self):
    super().setUp()
    tmp = tempfile.TemporaryDirectory()
    self.addCleanup(tmp.cleanup)
    self.dir = tmp.name


# Reference hashes: what the library computes in fused form, from JAX's own
# Threefry primitive, for the tests that check the fused forms against them.


def threefry(k, hi, lo):
  """Threefry-2x32 of the 64-bit counters `(hi, lo)` under key words `k`.

  JAX's primitive (`threefry2x32_p`), which `bits.threefry_fused` writes out.
  """
  hi, lo = jnp.broadcast_arrays(
      jnp.asarray(hi, jnp.uint32), jnp.asarray(lo, jnp.uint32)
  )
  k1 = jnp.broadcast_to(k[0], ())
  k2 = jnp.broadcast_to(k[1], ())
  return tuple(threefry2x32_p.bind(k1, k2, hi, lo))


def element_bits(k, rows, cols, row_length: int):
  """32 random bits of elements `(rows, cols)` of a `(*, row_length)` array.

  `jax.random.bits(key, (n_rows, row_length))[rows, cols]` under the
  partitionable threefry: the flat counter `row * row_length + col` hashed,
  the two output words XOR-ed, as `jax.random` does for 32-bit draws.
  """
  hi, lo = bits.mul_add_u64(rows, row_length, cols)
  b1, b2 = threefry(k, hi, lo)
  return b1 ^ b2


def round_keys(key, rows, n: int):
  """The counter method's per-row round material `(K, a, b)`, `[rows, R]`."""
  return counter.row_words(key, rows, n).rounds


def counter_value_bits(key, rows, cols):
  """The counter method's 32 value bits of elements `(rows[i], cols[...])`."""
  return counter.hash_values(
      counter.row_words(key, rows, 1, rounds=False).value, cols
  )
