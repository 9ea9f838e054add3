"""scripts/checkpoint_campaign.py, small: no violation in any group.

The script tries alberta.checkpoint as a hostile user and machine would
(damaged files, SIGKILLs mid-save, racing savers and readers, links, every
dtype) and exits 1 on any wrong number, lost file or undocumented error. Here
it runs with a few cases per group, in the slow step; docs/CHECKPOINT.md
records a full run.
"""

from tests import env  # noqa: F401

import os
import subprocess
import sys

from absl.testing import absltest

from tests import test_utils


class CampaignTest(absltest.TestCase):

  @test_utils.slow
  def test_a_small_campaign_finds_no_violation(self):
    env_vars = dict(os.environ, PYTHONPATH=test_utils.ROOT)
    env_vars.pop("XLA_FLAGS", None)
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(test_utils.ROOT, "scripts", "checkpoint_campaign.py"),
            "--flips=2",
            "--kills=3",
            "--racers=1",
            "--race_s=5",
        ],
        capture_output=True,
        text=True,
        env=env_vars,
        cwd=test_utils.ROOT,
        timeout=1200,
        check=False,
    )
    self.assertEqual(proc.returncode, 0, msg=proc.stdout[-4000:])
    self.assertIn(" 0 violations.", proc.stdout)
    for group in (
        "damage (dense, verify=True)",
        "damage (ell, verify=True)",
        "kills",
        "races (reads)",
        "races (claims)",
        "links",
        "dtypes (x64=True)",
    ):
      self.assertIn(group, proc.stdout)


if __name__ == "__main__":
  absltest.main()
