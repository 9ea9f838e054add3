"""Bad ELL indices and repeated pmap devices are refused with a clear error.

Proves that `to_dense` and `to_bcoo` check concrete indices before any work
(each in `[0, fan_in)`, distinct within a row for `to_dense`, strictly
ascending for `to_bcoo`), naming the function, the offending position and
value, where before they silently disagreed; that under `jax.jit` (indices
unknown) they still run, as documented; and that `pmap_sparse_init` refuses
a device listed twice, naming it.
"""

from tests import env  # noqa: F401

import jax
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

import alberta

_SHAPE = (4, 10)


def _ell():
  return alberta.sparse_init_ell(jax.random.key(0), _SHAPE, 0.5)


class EllIndexValidationTest(parameterized.TestCase):

  @parameterized.product(
      fn=("to_dense", "to_bcoo"),
      case=(
          (
              "too_large",
              (1, 2),
              10,
              r"indices\[1, 2\] = 10 is outside " r"\[0, fan_in=10\)",
          ),
          (
              "far_too_large",
              (3, 4),
              2**31 - 1,
              r"indices\[3, 4\] = 2147483647 is outside",
          ),
          (
              "negative",
              (2, 0),
              -3,
              r"indices\[2, 0\] = -3 is outside " r"\[0, fan_in=10\)",
          ),
      ),
  )
  def test_out_of_range_index_is_named(self, fn, case):
    _, (row, col), value, message = case
    values, indices = _ell()
    with self.assertRaisesRegex(ValueError, rf"^{fn}: {message}"):
      getattr(alberta, fn)(values, indices.at[row, col].set(value), _SHAPE)

  def test_numpy_indices_are_checked_too(self):
    values, indices = _ell()
    bad = np.array(indices)
    bad[0, -1] = 12
    with self.assertRaisesRegex(ValueError, r"indices\[0, 4\] = 12"):
      alberta.to_dense(values, bad, _SHAPE)

  def test_index_range_uses_the_flattened_fan_in(self):
    values, indices = alberta.sparse_init_ell(jax.random.key(1), (4, 2, 5), 0.5)
    alberta.to_dense(values, indices, (4, 2, 5))  # fan_in 10: fine.
    with self.assertRaisesRegex(
        ValueError, r"outside \[0, fan_in=10\) of " r"shape \(4, 2, 5\)"
    ):
      alberta.to_bcoo(values, indices.at[0, 0].set(10), (4, 2, 5))

  def test_repeated_index(self):
    values, indices = _ell()
    repeated = indices.at[3, 1].set(indices[3, 0])
    with self.assertRaisesRegex(
        ValueError,
        rf"^to_dense: indices must be distinct within each row, "
        rf"but row 3 repeats {int(indices[3, 0])}\.",
    ):
      alberta.to_dense(values, repeated, _SHAPE)
    with self.assertRaisesRegex(
        ValueError,
        r"^to_bcoo: indices must be strictly ascending within "
        r"each row, but row 3 has indices\[3, 1\]",
    ):
      alberta.to_bcoo(values, repeated, _SHAPE)

  def test_unsorted_rows_are_fine_for_to_dense_not_for_to_bcoo(self):
    values, indices = _ell()
    flipped_values, flipped = values[:, ::-1], indices[:, ::-1]
    np.testing.assert_array_equal(
        alberta.to_dense(flipped_values, flipped, _SHAPE),
        alberta.to_dense(values, indices, _SHAPE),
    )
    with self.assertRaisesRegex(
        ValueError,
        r"^to_bcoo: .*strictly ascending.*" r"but row 0 has indices\[0, 1\]",
    ):
      alberta.to_bcoo(flipped_values, flipped, _SHAPE)

  def test_shapes_and_dtypes_are_named(self):
    values, indices = _ell()
    with self.assertRaisesRegex(
        TypeError, r"^to_dense: indices must be " r"integers, got dtype float32"
    ):
      alberta.to_dense(values, values, _SHAPE)
    with self.assertRaisesRegex(
        TypeError, r"^to_bcoo: indices must be an " r"array, got list"
    ):
      alberta.to_bcoo(values, indices.tolist(), _SHAPE)
    with self.assertRaisesRegex(
        ValueError,
        r"^to_dense: values and indices " r"must both be \[fan_out, nnz\]",
    ):
      alberta.to_dense(values, indices[:, 1:], _SHAPE)

  def test_under_jit_the_values_are_not_checked(self):
    # Documented: a traced index has no value to check. Both still run.
    values, indices = _ell()
    bad = indices.at[1, 2].set(10)
    dense = jax.jit(alberta.to_dense, static_argnums=2)(values, bad, _SHAPE)
    self.assertEqual(dense.shape, _SHAPE)
    bcoo = jax.jit(alberta.to_bcoo, static_argnums=2)(values, bad, _SHAPE)
    self.assertEqual(bcoo.shape, _SHAPE)

  def test_good_arrays_pass_sharded(self):
    mesh = jax.make_mesh(
        (4,), ("rows",), axis_types=(jax.sharding.AxisType.Auto,)
    )
    rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("rows"))
    values, indices = alberta.sharded_sparse_init_ell(
        jax.random.key(0), _SHAPE, 0.5, sharding=rows
    )
    np.testing.assert_array_equal(
        alberta.to_bcoo(values, indices, _SHAPE).todense(),
        alberta.to_dense(values, indices, _SHAPE),
    )
    with self.assertRaisesRegex(ValueError, r"indices\[2, 1\] = -1"):
      alberta.to_dense(
          values, jax.device_put(indices.at[2, 1].set(-1), rows), _SHAPE
      )


class PmapDevicesValidationTest(absltest.TestCase):

  def test_repeated_device_is_named(self):
    d = jax.devices()
    with self.assertRaisesRegex(
        ValueError,
        rf"devices must be distinct: .* but {d[0]} appears more "
        rf"than once in devices=",
    ):
      alberta.pmap_sparse_init(
          jax.random.key(0), (16, 16), devices=[d[0], d[0]]
      )
    with self.assertRaisesRegex(ValueError, rf"but {d[0]}, {d[1]} appear more"):
      alberta.pmap_sparse_init(
          jax.random.key(0), (16, 16), devices=[d[0], d[1], d[0], d[1]]
      )

  def test_distinct_devices_still_work(self):
    d = jax.devices()
    out = alberta.pmap_sparse_init(
        jax.random.key(0), (16, 16), devices=[d[1], d[0]], method="counter"
    )
    self.assertEqual(out.shape, (2, 8, 16))
    np.testing.assert_array_equal(
        np.asarray(out).reshape(16, 16),
        alberta.sparse_init(jax.random.key(0), (16, 16), method="counter"),
    )


if __name__ == "__main__":
  absltest.main()
