"""Memory, from the compiled program's own accounting.

`compiled.memory_analysis()` reports, for the per-device program, the bytes of
its output and of its temporaries (everything XLA allocates besides arguments
and outputs). Chunked generation must keep the temporaries a small fraction of
the output: here at most a quarter of it, for a (16384, 2048) float32 matrix
on 8 devices, for every method, and for rows short enough for the permutation
method's compare path (a sharded 65536 x 1024 matrix, `sparse_init` at two
shapes). Programs are only lowered and compiled, never run, so the test is
cheap in memory whatever the matrix size; the permutation
method's programs take seconds to compile each (more for longer chunks), so
the default run checks its sort path once, at its tightest (a bfloat16 tile
of a 2-D mesh: half the output bytes per element, and column tiles that
still generate whole rows), and the slow run every variant.

The host loop (`blocks.generate_host_loop`, used by `sparse_init` outside any
trace) runs a program per chunk; its peak is the donated output buffer,
aliased in place, plus the chunk's temporaries and, where the chunk is
generated apart and then copied, the chunk's own buffer (donated and reused).
"""

from tests import env  # noqa: F401

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from alberta._src import blocks
from alberta._src import driver
from alberta._src.methods import METHODS
from alberta._src.spec import make_spec
from tests import test_utils

_SHAPE = (16384, 2048)
_N_DEVICES = 8
_MAX_TEMP_FRACTION = 0.25


def _sharded_memory(
    method: str, spec: P, chunk_rows, dtype=jnp.float32, shape=_SHAPE
):
  """`memory_analysis()` of the per-device program of `sharded_sparse_init`."""
  mesh = (
      jax.make_mesh((_N_DEVICES,), ("x",))
      if len(spec) < 2
      else jax.make_mesh((4, 2), ("x", "y"))
  )
  sparse_spec, _ = make_spec(shape, 0.9, "uniform", method, "nearest")
  fn = driver.sharded_program(
      blocks.DENSE,
      sparse_spec,
      np.dtype(dtype),
      NamedSharding(mesh, spec),
      chunk_rows,
  )
  key_data = jax.random.key_data(jax.random.key(0))
  return fn.lower(key_data).compile().memory_analysis()


_SHARDED_CASES = (
    # Rows of 1024: the permutation method's compare path (see
    # SparseInitMemoryTest.test_compare_path_chunks_keep_no_constant_alive).
    (
        "_permutation_compare_rows_default",
        "permutation",
        P("x"),
        None,
        (65536, 1024),
    ),
    ("_counter_rows_default", "counter", P("x"), None),
    ("_counter_2d_default", "counter", P("x", "y"), None),
    ("_counter_chunk16", "counter", P("x"), 16),
)
_SHARDED_SLOW_CASES = (
    ("_permutation_rows_default", "permutation", P("x"), None),
    ("_permutation_2d_default", "permutation", P("x", "y"), None),
    ("_permutation_chunk16", "permutation", P("x"), 16),
    ("_permutation_chunk64", "permutation", P("x"), 64),
    ("_counter_chunk256", "counter", P("x"), 256),
)


class ShardedMemoryTest(parameterized.TestCase):

  @parameterized.named_parameters(*_SHARDED_CASES)
  def test_chunked_temporaries_at_most_quarter_of_output(
      self, method, spec, chunk_rows, shape=_SHAPE
  ):
    self._check(method, spec, chunk_rows, shape)

  @parameterized.named_parameters(*_SHARDED_SLOW_CASES)
  @test_utils.slow
  def test_chunked_temporaries_at_most_quarter_of_output_more(
      self, method, spec, chunk_rows
  ):
    self._check(method, spec, chunk_rows)

  def _check(self, method, spec, chunk_rows, shape=_SHAPE):
    stats = _sharded_memory(method, spec, chunk_rows, shape=shape)
    # Per device: 1/8 of the float32 matrix (16 MiB for `_SHAPE`), whatever
    # the mesh.
    out_bytes = shape[0] * shape[1] * 4 // _N_DEVICES
    self.assertEqual(stats.output_size_in_bytes, out_bytes)
    self.assertLessEqual(
        stats.temp_size_in_bytes,
        _MAX_TEMP_FRACTION * out_bytes,
        msg=f"temp {stats.temp_size_in_bytes} bytes",
    )

  @parameterized.named_parameters(("_2d", P("x", "y")))
  def test_default_chunk_bounded_for_narrow_dtype(self, spec):
    # A bfloat16 tile has half the bytes but the same per-row temporaries
    # (values are generated in float32): the default chunk must shrink.
    self._check_narrow(spec)

  @parameterized.named_parameters(("_rows", P("x")))
  @test_utils.slow
  def test_default_chunk_bounded_for_narrow_dtype_more(self, spec):
    self._check_narrow(spec)

  def _check_narrow(self, spec):
    stats = _sharded_memory("permutation", spec, None, jnp.bfloat16)
    out_bytes = _SHAPE[0] * _SHAPE[1] * 2 // _N_DEVICES
    self.assertEqual(stats.output_size_in_bytes, out_bytes)
    self.assertLessEqual(
        stats.temp_size_in_bytes, _MAX_TEMP_FRACTION * out_bytes
    )


class SparseInitMemoryTest(parameterized.TestCase):
  """`sparse_init`'s own program: `generate` over the whole matrix.

  The same chunk loop as the sharded tile's, so the default run checks the
  cheap method; the slow run both.
  """

  def test_single_device_within_output_plus_small_temp(self):
    self._check("counter")

  @test_utils.slow
  def test_single_device_within_output_plus_small_temp_permutation(self):
    self._check("permutation")

  # Rows short enough for the permutation method's compare path: its first
  # round compares every column with the followed elements, which are then
  # still a constant. XLA once computed that `[rows, m, fan_in]` comparison
  # outside the chunk loop and kept it alive through it (0.57x the output).
  @parameterized.named_parameters(
      ("_fan_in_1024", (8192, 1024), 0.9),
      ("_fan_in_256_half", (16384, 256), 0.5),
  )
  def test_compare_path_chunks_keep_no_constant_alive(self, shape, sparsity):
    spec, _ = make_spec(shape, sparsity, "uniform", "permutation", "nearest")
    self.assertLess(
        blocks.default_chunk_rows(spec, *shape, np.float32), shape[0]
    )  # chunked, in a loop
    self._check("permutation", shape, sparsity)

  def _check(self, method, shape=(4096, 4096), sparsity=0.9):
    spec, _ = make_spec(shape, sparsity, "uniform", method, "nearest")
    stats = (
        blocks._matrix_in_one_program.lower(
            jax.random.key(0), spec, np.dtype(np.float32), None
        )
        .compile()
        .memory_analysis()
    )
    out_bytes = shape[0] * shape[1] * 4
    self.assertEqual(stats.output_size_in_bytes, out_bytes)
    self.assertLessEqual(
        stats.temp_size_in_bytes,
        _MAX_TEMP_FRACTION * out_bytes,
        msg=f"temp {stats.temp_size_in_bytes} bytes",
    )


class HostLoopMemoryTest(parameterized.TestCase):

  # Shapes the default chunks: rows of 1024 for the permutation method (its
  # compare path, which compiles in a second; the sort path's long rows are
  # in the slow run), short ones for the counter method (whose temporaries
  # are per-row words).
  @parameterized.named_parameters(
      ("_permutation", "permutation", (4096, 1024)),
      ("_counter", "counter", (2**20, 16)),
  )
  def test_each_chunk_costs_at_most_a_quarter_of_the_output(
      self, method, shape
  ):
    self._check(method, shape)

  @test_utils.slow
  def test_each_chunk_costs_at_most_a_quarter_of_the_output_long_matrix(self):
    self._check("permutation", (8192, 2048))  # two sort rounds, row groups

  def _check(self, method, shape):
    spec, _ = make_spec(shape, 0.9, "uniform", method, "nearest")
    dtype = np.dtype(np.float32)
    chunk_rows = blocks.host_loop_chunk_rows(spec, *shape, dtype)
    self.assertLess(chunk_rows, shape[0])  # the host loop is what runs
    out_bytes = shape[0] * shape[1] * 4
    index = jax.ShapeDtypeStruct((), jnp.uint32)
    matrix = jax.ShapeDtypeStruct(shape, dtype)
    key = jax.random.key(0)
    step = blocks._chunk_program(spec, shape[1], dtype, chunk_rows)
    chunk_bytes = chunk_rows * shape[1] * 4
    if METHODS[method].separate_tile:
      # The chunk is generated into its own donated buffer, then copied.
      chunk = jax.ShapeDtypeStruct((chunk_rows, shape[1]), dtype)
      write = (
          step.lower(matrix, chunk, key, index, index, index)
          .compile()
          .memory_analysis()
      )
      extra = chunk_bytes + write.temp_size_in_bytes
      written = out_bytes + chunk_bytes  # Both outputs, both donated.
    else:
      write = (
          step.lower(matrix, None, key, index, index, index)
          .compile()
          .memory_analysis()
      )
      extra = write.temp_size_in_bytes
      written = out_bytes
    # Donated: the outputs are the arguments' buffers, not a second matrix
    # or a fresh chunk each step (two outputs add their tuple's pointers).
    self.assertBetween(write.output_size_in_bytes, written, written + 64)
    self.assertEqual(write.alias_size_in_bytes, written)
    self.assertLessEqual(
        extra,
        _MAX_TEMP_FRACTION * out_bytes,
        msg=f"chunk and temporaries: {extra} bytes",
    )


if __name__ == "__main__":
  absltest.main()
