"""ddpm/ddim samples equal those recorded before the continuous-noise engine (tests/sampling_regression.py)."""
from __future__ import annotations

import numpy as np
import pytest
from sampling_regression import FIXTURE, compute


@pytest.fixture(scope="module")
def recorded_and_now():
    with np.load(FIXTURE) as recorded:
        return dict(recorded), compute()


def test_ddpm_and_ddim_samples_are_unchanged(recorded_and_now):
    recorded, now = recorded_and_now
    assert sorted(now) == sorted(recorded) and len(now) == 32
    for key, expected in recorded.items():
        err = np.linalg.norm(now[key].astype(np.float64) - expected) / np.linalg.norm(expected)
        assert err < 1e-5, f"{key}: relative error {err:.3g}"
    # The cases differ from one another: guidance and eta change the samples.
    assert not np.allclose(recorded["cosine/ddim/ddim25/0.0/plain/draw"], recorded["cosine/ddim/ddim25/0.0/guided/draw"])
    assert not np.allclose(recorded["linear/ddim/ddim25/0.0/plain/loop"], recorded["linear/ddim/ddim25/0.7/plain/loop"])
