"""Shared test fixtures: the larq oracle (a missing file is an error, never a skip)."""

import json
import os
import pathlib

# Eight simulated CPU devices for the sharding tests; must be set before jax is imported.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import re

import jax
import numpy as np
import pytest

# Reference values in the tests are float32 sums: keep matmuls and convs in full float32 on
# accelerators too (TF32/bf16 passes, a GPU default, would miss the tolerances). No-op on CPU.
jax.config.update("jax_default_matmul_precision", "highest")

DATA = pathlib.Path(__file__).parent / "data"
README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def readme_fenced_blocks(start: str | None = None, end: str | None = None
                         ) -> list[tuple[str, str, int]]:
    """(language, code, line number) of every fenced block of README.md, or of those between
    two markers."""
    text = README.read_text()
    lo = text.index(start) if start else 0
    hi = text.index(end) if end else len(text)
    return [(m.group(1), m.group(2), text.count("\n", 0, m.start()) + 1)
            for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M)
            if lo <= m.start() < hi]


def readme_python_blocks(start: str, end: str) -> list[str]:
    """The ```python blocks of README.md between two markers, for tests that run them."""
    return [code for lang, code, _ in readme_fenced_blocks(start, end) if lang == "python"]


def read_events(logdir) -> list:
    """Every Event of a TensorBoard log directory, file by file in name order: the TFRecord
    framing (length, its crc, record, its crc) read here, records parsed with tensorboardX's
    Event proto."""
    import struct

    from tensorboardX.proto import event_pb2

    events = []
    for path in sorted(pathlib.Path(logdir).glob("events.out.tfevents.*")):
        data, pos = path.read_bytes(), 0
        while pos < len(data):
            (n,) = struct.unpack("<Q", data[pos:pos + 8])
            events.append(event_pb2.Event.FromString(data[pos + 12:pos + 12 + n]))
            pos += 12 + n + 4
    return events


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
