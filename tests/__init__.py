"""The tests of alberta, its scripts and its documentation (absltest)."""
