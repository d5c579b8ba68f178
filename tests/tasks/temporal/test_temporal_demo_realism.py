"""The harder BioMassters stand-in of issue 20: noisy, shifted training targets; true answers."""
import numpy as np

from foldnet.tasks.temporal import demo_data as temporal_demo_data


def test_training_targets_are_shifted_and_noisy():
    rng = np.random.default_rng(0)
    _, _, agbm = temporal_demo_data.make_forest(rng, 32)
    seen = [temporal_demo_data.observed_target(np.random.default_rng(s), agbm) for s in range(6)]
    assert all(o.dtype == np.float32 and o.shape == agbm.shape and (o >= 0).all() for o in seen)
    for o in seen:
        rel = np.abs(o - agbm).mean() / agbm.mean()
        assert 0.03 < rel < 0.6
    assert abs(np.mean(seen) / agbm.mean() - 1) < 0.05  # noise without bias


def test_s2_haze_and_blurred_20m_bands():
    rng = np.random.default_rng(1)
    h = np.zeros((32, 32))
    h[:, 16:] = 1.0  # a sharp forest edge between columns 15 and 16
    e = np.ones_like(h)
    profile = temporal_demo_data.make_s2(rng, h, e, 10).astype(float)[..., :10].mean(axis=0)  # [16, 10]

    def edge_share(band):  # how much of the step has leaked to the column before the edge
        low, high = profile[:8, band].mean(), profile[-8:, band].mean()
        return (profile[15, band] - low) / (high - low)

    assert edge_share(4) > 0.1  # B06, 20 m: resampled, mixed across the edge
    assert abs(edge_share(6)) < 0.08  # B08, 10 m: sharp
    s1a = temporal_demo_data.make_s1(np.random.default_rng(4), h, e, 10, offset=(0.0, 0.0))
    s1b = temporal_demo_data.make_s1(np.random.default_rng(4), h, e, 10, offset=(2.0, -1.0))
    ok = (s1a > -9000) & (s1b > -9000)
    assert np.allclose((s1b - s1a)[..., 0][ok[..., 0]], 2.0, atol=1e-3)
