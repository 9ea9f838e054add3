"""Helpers every test module shares: matrix comparisons, bit views, temp dirs, the slow gate.

Import `tests.env` first (it sets the 8 virtual CPU devices before JAX
starts); this module imports JAX.
"""

from __future__ import annotations

import os
import tempfile
import unittest

import jax.numpy as jnp
import numpy as np

try:  # pytest marks slow tests so `-m slow` selects them; Bazel has no pytest.
  import pytest
except ImportError:  # pragma: no cover
  pytest = None

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
      f"slow test: set {SLOW_ENV}=1 to run it (.ci/run does)")(test)
  if pytest is not None:
    test = pytest.mark.slow(test)
  return test


def as_bits(x) -> np.ndarray:
  """The bit patterns of a float array, as unsigned ints of the same width.

  bfloat16 and float16 give uint16, float32 uint32, float64 uint64.
  """
  x = np.asarray(x)
  width = {2: np.uint16, 4: np.uint32, 8: np.uint64}[x.dtype.itemsize]
  return x.view(width)


def as_bits_unsigned_zero(x) -> np.ndarray:
  """float32 bit patterns with -0.0 read as +0.0 (ELL arrays carry no zeros)."""
  x = np.asarray(x)
  if x.dtype == jnp.bfloat16:
    x = x.astype(np.float32)
  return (x.astype(np.float32) + np.float32(0)).view(np.uint32)


def assert_same_matrix(actual, expected, init_type: str) -> None:
  """Same zero pattern (signed zeros included) and the same values.

  Uniform values must match bit for bit. Normal values are held to the
  library's contract of a few ulps (XLA may fuse `erf_inv` differently in
  different programs); on the CPU they are currently bit-identical too.
  """
  actual = np.asarray(actual)
  expected = np.asarray(expected)
  np.testing.assert_array_equal(actual.shape, expected.shape)
  np.testing.assert_array_equal(actual == 0, expected == 0)
  np.testing.assert_array_equal(np.signbit(actual), np.signbit(expected))
  if init_type == "uniform":
    np.testing.assert_array_equal(as_bits(actual), as_bits(expected))
  else:
    np.testing.assert_array_max_ulp(actual, expected, maxulp=4)


class TempDirMixin:
  """`self.dir`: a fresh temporary directory per test, removed afterwards.

  List it before the TestCase base: `class T(TempDirMixin, parameterized.TestCase)`.

  Not absltest's `create_tempdir()`: that needs absl flags, which pytest never
  parses.
  """

  def setUp(self):
    super().setUp()
    tmp = tempfile.TemporaryDirectory()
    self.addCleanup(tmp.cleanup)
    self.dir = tmp.name
