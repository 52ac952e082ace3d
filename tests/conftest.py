"""Shared test fixtures: the larq oracle (a missing file is an error, never a skip)."""

import json
import os
import pathlib

# Eight simulated CPU devices for the sharding tests; must be set before jax is imported.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import numpy as np
import pytest

DATA = pathlib.Path(__file__).parent / "data"


def _load_oracle():
    npz, js = DATA / "larq_oracle.npz", DATA / "larq_oracle.json"
    if not npz.exists() or not js.exists():
        raise FileNotFoundError(
            f"larq oracle missing: expected {npz} and {js} (see tests/data/README.md)")
    with np.load(npz) as f:
        arrays = {k: f[k] for k in f.files}
    return arrays, json.loads(js.read_text())["keys"]


ORACLE, ORACLE_META = _load_oracle()


@pytest.fixture(scope="session")
def oracle():
    """All oracle arrays by key (q/<case>/<input>/..., layer/..., model/..., bop/...)."""
    return ORACLE
