"""Saving and restoring generated matrices with orbax-checkpoint.

A checkpoint is a directory holding an orbax PyTree checkpoint of the arrays
(every process writes the shards it holds, in parallel) plus `alberta.json`,
the metadata needed to recompute the matrix and, per array, a checksum of its
contents. docs/CHECKPOINT.md describes the format in full.

orbax does what it does: it writes the arrays, straight into one staging
directory beside the target, and marks them finished. alberta adds what orbax
lacks, one concern per module:

* `layout`: what a checkpoint is (the one rule `overwrite` obeys) and which
  targets a save may take (`check_output`);
* `digest`: the on-device checksum of an array, and which dtypes it reads;
* `metadata`: `alberta.json`, its schema and its own digest;
* `staging`: the staging directory's name and its removal;
* `publish`: the no-replace rename that makes a checkpoint appear whole;
* `write` (`save`), `read` (`restore`, `restore_metadata`) and `estimate`
  (`estimate_stored_bytes`): the public calls.

orbax-checkpoint is an optional dependency (`pip install
"alberta[checkpoint]"`); it is imported only when a checkpoint is saved,
judged or restored.
"""

# Every import below is a re-export: alberta/checkpoint.py takes the public
# calls from here.
# ruff: noqa: F401

from alberta._src.checkpoint.estimate import estimate_stored_bytes
from alberta._src.checkpoint.layout import check_output
from alberta._src.checkpoint.layout import is_checkpoint
from alberta._src.checkpoint.metadata import ChecksumError
from alberta._src.checkpoint.read import ReplacedError
from alberta._src.checkpoint.read import restore
from alberta._src.checkpoint.read import restore_metadata
from alberta._src.checkpoint.staging import remove_staging
from alberta._src.checkpoint.staging import stale_staging
from alberta._src.checkpoint.write import save
