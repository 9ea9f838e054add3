"""scripts/stream_q.py, the streaming Q(lambda) example, and its parts.

Proves that ObGD's step matches one worked by hand, in both regimes of its
bound (the effective step size `lr / M` when `M > 1`, `lr` otherwise), and
zeroes the trace only on reset; that the observation and reward normalizers
give NumPy's mean and unbiased variance over a stream; that gymnax's step has
the arity the agent unpacks (the pinned version's API); that a short run of
both arms has curves and episodes of the right shapes, the sparse arm's
initial kernels exactly `k` zeros per output unit (`ceil` rounding), and the
dense arm the same draw without the zeros (the arms differ only there); and
that the script, run as a user runs it, writes a complete JSON and a plot, and
refuses a bad flag before any work. Long runs are measured in
docs/STREAMING.md, not here.
"""

from tests import env  # noqa: F401

import json
import math
import os
import subprocess
import sys

from absl.testing import absltest
from absl.testing import parameterized
import gymnax
import jax
import jax.numpy as jnp
import numpy as np

import alberta
from scripts import stream_q
from scripts import stream_q_report
from scripts.streamlib import agent
from scripts.streamlib import normalizers
from scripts.streamlib import obgd
from tests import test_utils

_SCRIPT = os.path.join(test_utils.ROOT, "scripts", "stream_q.py")

_SHORT = dict(
    env="Breakout-MinAtar",
    steps=300,
    seeds=2,
    seed=0,
    lr=1.0,
    kappa=2.0,
    gamma=0.99,
    lamda=0.8,
    exploration_fraction=0.2,
    segments=3,
    curve_points=10,
    random_steps=200,
)


class ObGDTest(absltest.TestCase):

  def test_bounded_step_worked_by_hand(self):
    config = obgd.ObGDConfig(lr=1.0, gamma=0.99, lamda=0.8, kappa=2.0)
    params = {"w": jnp.array([1.0, -2.0])}
    trace = {"w": jnp.array([0.5, 0.0])}
    grad = {"w": jnp.array([1.0, 3.0])}
    # z = 0.792 * [0.5, 0] + [1, 3] = [1.396, 3];  ||z||_1 = 4.396;
    # M = kappa * lr * max(|delta|, 1) * ||z||_1 = 2 * 1 * 2 * 4.396 = 17.584;
    # alpha = lr / M;  w = w + alpha * delta * z.
    alpha = 1.0 / 17.584
    new_params, new_trace, step = obgd.update(
        params, trace, grad, jnp.float32(2.0), jnp.bool_(False), config
    )
    np.testing.assert_allclose(step, alpha, rtol=1e-6)
    np.testing.assert_allclose(new_trace["w"], [1.396, 3.0], rtol=1e-6)
    np.testing.assert_allclose(
        new_params["w"],
        [1.0 + alpha * 2.0 * 1.396, -2.0 + alpha * 2.0 * 3.0],
        rtol=1e-6,
    )

  def test_bound_uses_at_least_unit_td_error(self):
    # |delta| = 0.25 < 1 counts as 1: M = 2 * 0.5 * 1 * 4 = 4, alpha = 0.5 / 4.
    config = obgd.ObGDConfig(lr=0.5, gamma=1.0, lamda=1.0, kappa=2.0)
    params = {"a": jnp.zeros((2,)), "b": jnp.ones(())}
    grad = {"a": jnp.array([1.0, -1.0]), "b": jnp.float32(2.0)}
    new_params, _, step = obgd.update(
        params,
        obgd.init_trace(params),
        grad,
        jnp.float32(-0.25),
        jnp.bool_(False),
        config,
    )
    np.testing.assert_allclose(step, 0.125, rtol=1e-6)
    np.testing.assert_allclose(new_params["a"], [-0.03125, 0.03125], rtol=1e-6)
    np.testing.assert_allclose(new_params["b"], 1.0 - 0.0625, rtol=1e-6)

  def test_small_trace_takes_the_full_step_and_reset_zeroes_the_trace(self):
    # M = 2 * 1 * 1 * 0.1 = 0.2 <= 1: alpha = lr = 1, w = 0.5 * 0.1.
    config = obgd.ObGDConfig()
    params = {"w": jnp.zeros((2,))}
    grad = {"w": jnp.array([0.1, 0.0])}
    new_params, new_trace, step = obgd.update(
        params,
        obgd.init_trace(params),
        grad,
        jnp.float32(0.5),
        jnp.bool_(True),
        config,
    )
    self.assertEqual(float(step), 1.0)
    np.testing.assert_allclose(new_params["w"], [0.05, 0.0], rtol=1e-6)
    np.testing.assert_array_equal(new_trace["w"], [0.0, 0.0])


class NormalizersTest(absltest.TestCase):

  def test_observation_statistics_match_numpy_over_a_stream(self):
    rng = np.random.default_rng(0)
    stream = rng.normal(3.0, 2.0, size=(200, 4, 3)).astype(np.float32)
    stats = normalizers.init_stats((4, 3))
    normalize = jax.jit(normalizers.normalize_observation)
    for i, x in enumerate(stream):
      out, stats = normalize(stats, jnp.asarray(x))
      if i == 0:  # One sample: mean x, variance 1 by definition.
        np.testing.assert_allclose(out, 0.0, atol=1e-6)
    np.testing.assert_allclose(stats.mean, stream.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(
        normalizers.variance(stats), stream.var(axis=0, ddof=1), rtol=1e-4
    )
    np.testing.assert_allclose(
        out,
        (stream[-1] - stream.mean(axis=0))
        / np.sqrt(stream.var(axis=0, ddof=1) + normalizers.EPSILON),
        rtol=1e-4,
        atol=1e-5,
    )

  def test_reward_scale_is_the_return_traces_standard_deviation(self):
    rng = np.random.default_rng(1)
    rewards = rng.integers(0, 3, size=300).astype(np.float32)
    dones = (rng.random(300) < 0.05).astype(np.float32)
    gamma = 0.99
    traces, u = [], 0.0
    for r, d in zip(rewards, dones, strict=True):
      u = u * gamma * (1.0 - d) + r
      traces.append(u)
    scaler = normalizers.init_reward_scaler()
    scale = jax.jit(normalizers.scale_reward, static_argnums=3)
    for r, d in zip(rewards, dones, strict=True):
      out, scaler = scale(scaler, jnp.float32(r), jnp.float32(d), gamma)
    traces = np.asarray(traces)
    np.testing.assert_allclose(scaler.trace, traces[-1], rtol=1e-5)
    np.testing.assert_allclose(scaler.stats.mean, traces.mean(), rtol=1e-5)
    np.testing.assert_allclose(
        normalizers.variance(scaler.stats), traces.var(ddof=1), rtol=1e-4
    )
    np.testing.assert_allclose(
        out,
        rewards[-1] / np.sqrt(traces.var(ddof=1) + normalizers.EPSILON),
        rtol=1e-4,
    )


class AgentTest(absltest.TestCase):

  def test_gymnax_step_returns_terminated_and_truncated(self):
    # gymnax 1.0 (pinned in setup.py's `examples` and `test` extras) steps to
    # six values, 0.0.x to five; the agent unpacks `step_env` (five) and the
    # random policy `step` (six).
    breakout, params = gymnax.make("Breakout-MinAtar")
    _, state = breakout.reset(jax.random.key(0), params)
    out = breakout.step(jax.random.key(1), state, 0, params)
    self.assertLen(out, 6)
    self.assertLen(breakout.step_env(jax.random.key(1), state, 0, params), 5)
    self.assertEqual(out[0].shape, (10, 10, 4))

  def test_epsilon_falls_linearly_then_stays(self):
    config = agent.AgentConfig(total_steps=1000)
    np.testing.assert_allclose(
        agent.epsilon(jnp.int32(1), config), 1.0 - 0.99 / 200, rtol=1e-6
    )
    np.testing.assert_allclose(
        agent.epsilon(jnp.int32(100), config), 0.505, rtol=1e-6
    )
    np.testing.assert_allclose(
        agent.epsilon(jnp.int32(200), config), 0.01, rtol=1e-5
    )
    np.testing.assert_allclose(agent.epsilon(jnp.int32(900), config), 0.01)


class ShortRunTest(test_utils.TempDirMixin, parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.results = {
        s: stream_q.run(dict(_SHORT, sparsity=s)) for s in (0.9, 0.0)
    }

  @parameterized.parameters(0.9, 0.0)
  def test_shapes(self, sparsity):
    results = self.results[sparsity]
    curves = results["learning_curves"]
    self.assertLen(curves["window_end_steps"], 10)
    self.assertEqual(curves["window_end_steps"][-1], 300)
    self.assertLen(curves["mean_return"], 2)
    for curve in curves["mean_return"]:
      self.assertLen(curve, 10)
    self.assertLen(results["episodes"], 2)
    for seed_episodes in results["episodes"]:
      self.assertLen(seed_episodes["end_steps"], len(seed_episodes["returns"]))
      self.assertTrue(all(1 <= s <= 300 for s in seed_episodes["end_steps"]))
    self.assertLen(results["summary"]["final_return_per_seed"], 2)
    self.assertGreater(results["summary"]["steps_per_second"], 0)

  def test_sparse_kernels_have_k_zeros_per_output_unit(self):
    params = self.results[0.9]["initial_params"]
    for layer, fan_in, fan_out in (
        ("conv2_d", 36, 16),
        ("linear", 1024, 128),
        ("linear_1", 128, 3),
    ):
      kernels = np.asarray(params[layer]["w"])  # (seeds, ..., in, out)
      k = alberta.num_zeros(fan_in, 0.9, rounding="ceil")
      self.assertEqual(k, math.ceil(0.9 * fan_in))
      for seed_kernel in kernels:
        zeros = np.sum(seed_kernel.reshape(fan_in, fan_out) == 0, axis=0)
        np.testing.assert_array_equal(zeros, k, err_msg=layer)
      np.testing.assert_array_equal(params[layer]["b"], 0.0)

  def test_dense_arm_is_the_same_draw_without_the_zeros(self):
    sparse = self.results[0.9]["initial_params"]
    dense = self.results[0.0]["initial_params"]
    for layer in ("conv2_d", "linear", "linear_1"):
      s, d = np.asarray(sparse[layer]["w"]), np.asarray(dense[layer]["w"])
      self.assertEqual(int(np.sum(d == 0)), 0)
      np.testing.assert_array_equal(np.where(s == 0, 0.0, d), s)
      fan_in = int(np.prod(d.shape[1:-1]))
      self.assertLessEqual(np.abs(d).max(), 1.0 / math.sqrt(fan_in))

  def test_script_writes_complete_json_and_plot(self):
    out = os.path.join(self.dir, "run.json")
    png = os.path.join(self.dir, "run.png")
    proc = subprocess.run(
        [
            sys.executable,
            _SCRIPT,
            "--steps=200",
            "--seeds=2",
            "--segments=2",
            "--random_steps=100",
            "--curve_points=5",
            "--sparsity=0.9",
            f"--json={out}",
            f"--plot={png}",
        ],
        env=test_utils.subprocess_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    self.assertEqual(proc.returncode, 0, proc.stderr[-2000:])
    with open(out) as f:
      results = json.load(f)
    self.assertEqual(
        sorted(results),
        ["args", "device", "episodes", "learning_curves", "summary"],
    )
    self.assertEqual(results["args"]["env"], "Breakout-MinAtar")
    self.assertEqual(results["args"]["steps"], 200)
    self.assertEqual(results["args"]["sparsity"], 0.9)
    summary = results["summary"]
    for key in (
        "final_return_mean",
        "final_return_stderr",
        "final_return_per_seed",
        "steps_per_second",
        "random_return_mean",
    ):
      self.assertIn(key, summary)
    self.assertGreater(summary["steps_per_second"], 0)
    self.assertLen(results["learning_curves"]["mean_return"], 2)
    with open(png, "rb") as f:
      self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")

  def test_report_table_has_both_arms_and_refuses_mixed_budgets(self):
    paths = []
    for s, results in self.results.items():
      paths.append(os.path.join(self.dir, f"{s}.json"))
      with open(paths[-1], "w") as f:
        json.dump(
            {k: v for k, v in results.items() if k != "initial_params"}, f
        )
    text = stream_q_report.table(stream_q_report.load(paths))
    row = text.splitlines()[-1]
    sparse = self.results[0.9]["summary"]["final_return_mean"]
    self.assertIn("| Breakout-MinAtar | 300 x 2 |", row)
    if sparse is not None:
      self.assertIn(f"{sparse:.2f} ± ", row)
    self.assertIn("sparse 0.9 | dense", text)
    with open(paths[1]) as f:
      other = json.load(f)
    other["args"]["steps"] = 400
    with open(paths[1], "w") as f:
      json.dump(other, f)
    with self.assertRaisesRegex(Exception, "different steps x seeds"):
      stream_q_report.load(paths)

  def test_bad_flag_is_refused_before_any_work(self):
    out = os.path.join(self.dir, "missing", "run.json")
    proc = subprocess.run(
        [sys.executable, _SCRIPT, "--steps=100", f"--json={out}"],
        env=test_utils.subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    self.assertNotEqual(proc.returncode, 0)
    self.assertIn("--json", proc.stderr)
    self.assertFalse(os.path.exists(os.path.dirname(out)))


class FinalReturnTest(absltest.TestCase):

  def test_final_return_averages_episodes_ending_in_the_last_tenth(self):
    nan = np.nan
    returns = np.full((2, 20), nan)
    returns[0, [3, 17, 19]] = [100.0, 2.0, 4.0]  # Last 10%: indices 18, 19.
    returns[1, [18]] = [5.0]
    np.testing.assert_allclose(stream_q.final_returns(returns), [4.0, 5.0])
    summary = stream_q.summarize(returns, seconds=2.0)
    self.assertAlmostEqual(summary["final_return_mean"], 4.5)
    self.assertAlmostEqual(summary["final_return_stderr"], 0.5)
    self.assertAlmostEqual(summary["steps_per_second"], 20.0)


if __name__ == "__main__":
  absltest.main()
