"""pytest: start JAX with the suite's 8 virtual CPU devices."""

from tests import env  # noqa: F401
