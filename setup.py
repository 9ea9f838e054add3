"""Installs alberta: sparse weight initialization for JAX."""

import re
from pathlib import Path

from setuptools import find_packages, setup

_VERSION = re.search(
    r'__version__ = "([^"]+)"',
    Path(__file__).with_name("alberta").joinpath("__init__.py").read_text(),
).group(1)

setup(
    name="alberta",
    version=_VERSION,
    description=(
        "Sparse weight initialization (Elsayed et al. 2024) for JAX, "
        "Haiku and Flax, from one layer to matrices sharded over a pod."
    ),
    long_description=Path(__file__).with_name("README.md").read_text(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["alberta", "alberta.*"]),
    python_requires=">=3.10",
    # Floors are the versions the test suite runs with (the code relies on
    # jax 0.10's typed keys, `jax.shard_map` and Threefry layout).
    install_requires=[
        "absl-py>=2.5",
        "chex>=0.1.92",
        "dm-haiku>=0.0.17",
        "jax>=0.10.2",
        "numpy>=2.4",
    ],
    extras_require={
        "checkpoint": ["orbax-checkpoint>=0.12.8"],
        # alberta.keep_zeros, an optax GradientTransformation.
        "optax": ["optax>=0.2.8"],
        "test": [
            "equinox>=0.13.8",
            "flax>=0.12.8",
            "gymnax==1.0.1",
            "matplotlib>=3.11",
            "optax>=0.2.8",
            "orbax-checkpoint>=0.12.8",
            "pytest>=9",
            "pytest-xdist>=3.8",
            "scipy>=1.17",
        ],
        # scripts/stream_q.py: the streaming agent on MinAtar. gymnax is pinned
        # to the version whose step API tests/stream_q_test.py checks.
        "examples": ["gymnax==1.0.1", "matplotlib>=3.11"],
        # The PyTorch baseline of the benchmark, pinned: the CPU build of
        # 2.13.0 is the one it was measured with (a range lets pip pick a
        # newer CUDA build of several GB).
        "bench": ["matplotlib>=3.11", "torch==2.13.0"],
        "docs": ["sphinx>=9.0"],
        # tools/lint.sh; pinned, as a formatter's output changes between
        # versions and CI checks the tree is exactly as these leave it.
        "lint": ["pyink==26.5.1", "ruff==0.17.6"],
    },
    author="The alberta authors",
    license="Apache-2.0",
    license_files=["LICENSE"],
    project_urls={
        "Paper": "https://arxiv.org/abs/2410.14606",
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "License :: OSI Approved :: Apache Software License",
        "Intended Audience :: Science/Research",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
