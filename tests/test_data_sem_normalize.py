"""Normalization modes (exact inverses, degenerate dims) and statistics (pooled merge, cache)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from beingh.data.normalize import NORMALIZATION_MODES, Normalizer
from beingh.data.stats import (
    ColumnStats,
    compute_dataset_stats,
    default_cache_dir,
    merge_column_stats,
    merge_stats,
)


def _data(seed: int = 0, n: int = 500) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(loc=[0.5, -2.0, 10.0], scale=[0.1, 3.0, 0.01], size=(n, 3))


@pytest.mark.parametrize("mode", ["mean_std", "min_max", "scale", "none"])
def test_unclipped_modes_invert_exactly(mode):
    x = _data()
    norm = Normalizer.from_stats(mode, ColumnStats.from_values(x), 3)
    y = norm.forward(x)
    np.testing.assert_allclose(norm.inverse(y), x, rtol=0, atol=1e-12)
    if mode == "min_max":
        assert y.min() == pytest.approx(-1.0) and y.max() == pytest.approx(1.0)
    if mode == "mean_std":
        np.testing.assert_allclose(y.mean(0), 0, atol=1e-12)
        np.testing.assert_allclose(y.std(0), 1, atol=1e-12)


def test_q99_clips_and_inverts_inside_bounds():
    x = _data()
    stats = ColumnStats.from_values(x)
    norm = Normalizer.from_stats("q99", stats, 3)
    y = norm.forward(x)
    assert y.min() == -1.0 and y.max() == 1.0
    inside = np.all((x >= stats.q01) & (x <= stats.q99), axis=1)
    np.testing.assert_allclose(norm.inverse(y[inside]), x[inside], atol=1e-12)
    np.testing.assert_allclose(norm.forward(stats.q01), -1.0)
    np.testing.assert_allclose(norm.forward(stats.q99), 1.0)


def test_q99_clips_when_half_range_is_exactly_one():
    stats = ColumnStats.from_values(np.array([[-1.0], [1.0]]))
    stats.q01[:], stats.q99[:] = -1.0, 1.0
    assert Normalizer.from_stats("q99", stats, 1).forward(np.array([5.0]))[0] == 1.0


def test_binary_maps_two_valued_signal_and_back():
    x = np.array([[-1.0], [1.0], [1.0], [-1.0]])
    norm = Normalizer.from_stats("binary", ColumnStats.from_values(x), 1)
    np.testing.assert_array_equal(norm.forward(x)[:, 0], [0, 1, 1, 0])
    np.testing.assert_array_equal(norm.inverse(norm.forward(x)), x)
    np.testing.assert_array_equal(norm.inverse(np.array([[0.2], [0.7]]))[:, 0], [-1.0, 1.0])


@pytest.mark.parametrize("mode", [m for m in NORMALIZATION_MODES if m not in ("none", "binary")])
def test_degenerate_dims_are_finite_and_invertible(mode):
    x = np.column_stack([np.full(20, 3.0), np.linspace(-1, 2, 20)])
    norm = Normalizer.from_stats(mode, ColumnStats.from_values(x), 2)
    y = norm.forward(x)
    assert np.all(np.isfinite(y))
    if mode != "scale":  # scale has no centre: 3.0 / 3.0 = 1, the others centre the constant at 0
        np.testing.assert_allclose(y[:, 0], 0.0)
    probe = np.array([[7.5, 0.3]])  # an unseen value on the constant dim still inverts exactly
    np.testing.assert_allclose(norm.inverse(norm.forward(probe)), probe, atol=1e-12)
    zero = ColumnStats.from_values(np.zeros((5, 1)))
    z = Normalizer.from_stats(mode, zero, 1)
    np.testing.assert_allclose(z.inverse(z.forward(np.array([[0.25]]))), [[0.25]])


def test_normalizer_errors_name_the_key():
    stats = ColumnStats.from_values(_data())
    with pytest.raises(ValueError, match="action.x.*needs statistics"):
        Normalizer.from_stats("q99", None, 3, where="action.x")
    with pytest.raises(ValueError, match="3 dims, the modality has 2"):
        Normalizer.from_stats("q99", stats, 2)
    with pytest.raises(ValueError, match="unknown normalization mode 'q01_q99'"):
        Normalizer.from_stats("q01_q99", stats, 3)


def test_column_stats_match_numpy_and_json_round_trip():
    x = _data()
    stats = ColumnStats.from_values(x)
    np.testing.assert_allclose(stats.std, x.std(0))
    np.testing.assert_allclose(stats.q99, np.quantile(x, 0.99, axis=0))
    back = ColumnStats.from_dict(json.loads(json.dumps(stats.to_dict())), count=stats.count)
    for name in ("mean", "std", "min", "max", "q01", "q99"):
        np.testing.assert_array_equal(getattr(back, name), getattr(stats, name))
    assert stats.slice(1, 3).dim == 2
    with pytest.raises(ValueError, match="missing statistics"):
        ColumnStats.from_dict({"mean": [0.0]})


def test_pooled_merge_equals_stats_of_concatenation():
    parts = [_data(seed, n) * (seed + 1) for seed, n in ((0, 100), (1, 37), (2, 420))]
    merged = merge_column_stats([(ColumnStats.from_values(p), len(p)) for p in parts])
    full = ColumnStats.from_values(np.concatenate(parts))
    for name in ("mean", "std", "min", "max"):
        np.testing.assert_allclose(getattr(merged, name), getattr(full, name), rtol=1e-10, atol=1e-12)
    assert merged.count == full.count
    assert np.all(merged.q01 <= full.q01) and np.all(merged.q99 >= full.q99)


def test_merge_stats_per_key_and_mismatch():
    a = {"x": ColumnStats.from_values(_data(0)), "only_a": ColumnStats.from_values(_data(1))}
    b = {"x": ColumnStats.from_values(_data(2)), "only_a": ColumnStats.from_values(_data(3)[:, :2])}
    with pytest.raises(ValueError, match="cannot merge 'only_a'.*mismatch"):
        merge_stats([(a, 10), (b, 20)])
    merged = merge_stats([(a, 10), (b, 20)], skip_mismatched=True)
    assert set(merged) == {"x"}
    c = {"y": ColumnStats.from_values(_data(4))}
    merged = merge_stats([(a, 10), (c, 5)])
    np.testing.assert_array_equal(merged["y"].mean, c["y"].mean)


def test_compute_dataset_stats_is_exact_and_cached_outside_the_dataset(lerobot_fixtures, tmp_path, monkeypatch):
    from beingh.data.lerobot import LeRobotDataset

    root = tmp_path / "ds"
    shutil.copytree(lerobot_fixtures / "v30_h264", root)
    for path in [root, *root.rglob("*")]:  # a copied fixture may be read-only
        path.chmod(0o755 if path.is_dir() else 0o644)
    dataset = LeRobotDataset(root)
    cache = tmp_path / "cache"
    stats = compute_dataset_stats(dataset, cache)
    assert set(stats) == {"observation.state", "action"}
    expected = ColumnStats.from_values(dataset.column("action"))
    np.testing.assert_allclose(stats["action"].q01, expected.q01)
    assert stats["action"].count == dataset.num_frames
    assert len(list(cache.glob("*.json"))) == 2 and not list(cache.glob("*.tmp"))
    assert sorted(p.name for p in (root / "meta").iterdir()) == sorted(
        p.name for p in (lerobot_fixtures / "v30_h264" / "meta").iterdir())

    monkeypatch.setattr(dataset, "column", lambda c: pytest.fail(f"re-read {c} despite the cache"))
    again = compute_dataset_stats(dataset, cache, columns=["action"])
    np.testing.assert_array_equal(again["action"].mean, stats["action"].mean)

    info = json.loads((root / "meta" / "info.json").read_text())
    info["robot_type"] = "edited"
    (root / "meta" / "info.json").write_text(json.dumps(info, indent=1))
    edited = LeRobotDataset(root)
    monkeypatch.setattr(edited, "column", lambda c: pytest.fail(f"read {c} again"))
    with pytest.raises(pytest.fail.Exception, match="read action again"):  # the stale entry is recomputed ...
        compute_dataset_stats(edited, cache, columns=["action"])
    monkeypatch.undo()
    compute_dataset_stats(edited, cache, columns=["action"])
    assert len(list(cache.glob("*.json"))) == 2  # ... in place: edits do not pile up stale entries
    with pytest.raises(ValueError, match="no column"):
        compute_dataset_stats(edited, cache, columns=["observation.nope"])

    monkeypatch.setenv("BEINGH_CACHE_DIR", str(tmp_path / "env"))
    assert default_cache_dir() == tmp_path / "env" / "stats"


def test_compute_dataset_stats_shows_progress(lerobot_fixtures, tmp_path, capsys):
    from beingh.data.lerobot import LeRobotDataset

    dataset = LeRobotDataset(lerobot_fixtures / "v30_av1")
    compute_dataset_stats(dataset, tmp_path)
    err = capsys.readouterr().err
    assert "stats v30_av1" in err and "2/2" in err and "col/s" in err, err
    compute_dataset_stats(dataset, tmp_path)
    assert "stats v30_av1" not in capsys.readouterr().err  # all cached: nothing to show


def test_statistics_without_quantiles():
    stats = ColumnStats.from_dict({"mean": [0.0], "std": [1.0], "min": [-2.0], "max": [2.0], "q01": [], "q99": []})
    assert not stats.has_quantiles and stats.to_dict()["q99"] == []
    assert not stats.slice(0, 1).has_quantiles
    with pytest.raises(ValueError, match="needs q01/q99"):
        Normalizer.from_stats("q99", stats, 1, where="action.g")
    np.testing.assert_allclose(Normalizer.from_stats("min_max", stats, 1).forward(np.array([2.0])), [1.0])
    full = ColumnStats.from_values(np.array([[0.0], [1.0]]))
    assert not merge_column_stats([(stats, 1), (full, 1)]).has_quantiles
    with pytest.raises(ValueError, match="both be given"):
        ColumnStats(mean=[0], std=[1], min=[0], max=[1], q01=[0], q99=None)
