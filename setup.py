"""Installs alberta: sparse weight initialization for JAX."""

import re
from pathlib import Path

from setuptools import find_packages, setup

_VERSION = re.search(r'__version__ = "([^"]+)"',
                     Path(__file__).with_name("alberta").joinpath(
                         "__init__.py").read_text()).group(1)

setup(
    name="alberta",
    version=_VERSION,
    description=("Sparse weight initialization (Elsayed et al. 2024) for JAX, "
                 "Haiku and Flax, from one layer to matrices sharded over a pod."),
    long_description=Path(__file__).with_name("README.md").read_text(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["alberta", "alberta.*"]),
    python_requires=">=3.10",
    install_requires=[
        "absl-py>=1.0",
        "chex>=0.1.86",
        "dm-haiku>=0.0.12",
        "jax>=0.6",
        "numpy>=1.24",
    ],
    extras_require={
        "checkpoint": ["orbax-checkpoint>=0.11"],
        # alberta.keep_zeros, an optax GradientTransformation.
        "optax": ["optax>=0.2"],
        "test": [
            "equinox>=0.11",
            "flax>=0.10",
            "matplotlib>=3.7",
            "optax>=0.2",
            "orbax-checkpoint>=0.11",
            "pytest>=7",
            "pytest-xdist>=3",
            "scipy>=1.10",
        ],
        "bench": ["matplotlib>=3.7", "torch==2.13.0"],
    },
    license="Apache-2.0",
)
