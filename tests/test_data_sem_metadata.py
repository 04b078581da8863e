"""Dataset metadata and the hierarchical <group>_metadata.json: variants really differ, selection, round trip."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from beingh.data.embodiment import get_data_config
from beingh.data.metadata import (
    DatasetMetadata,
    MetadataSource,
    ModalityMeta,
    VideoMeta,
    build_dataset_metadata,
    build_group_metadata,
    load_metadata,
    select_metadata,
    training_statistics_only,
    training_variant,
    write_group_metadata,
)
from beingh.data.stats import ColumnStats, merge_column_stats


def _metadata(seed: int, tag: str, n: int = 50, width: int = 3) -> DatasetMetadata:
    rng = np.random.default_rng(seed)
    eef = ColumnStats.from_values(rng.normal(seed, 1 + seed, size=(n, width)))
    grip = ColumnStats.from_values(rng.choice([-1.0, 1.0], size=(n, 1)))
    return DatasetMetadata(
        statistics={"state": {"eef_position": eef}, "action": {"eef_position": eef, "gripper": grip}},
        modalities={"video": {}, "state": {"eef_position": ModalityMeta(True, None, [width], True)},
                    "action": {"eef_position": ModalityMeta(False, None, [width], True),
                               "gripper": ModalityMeta(True, None, [1], True)}},
        embodiment_tag=tag,
    )


@pytest.fixture
def sources() -> list[MetadataSource]:
    return [
        MetadataSource("libero_spatial", _metadata(0, "libero"), 100, embodiment="franka"),
        MetadataSource("libero_object", _metadata(1, "libero"), 300, embodiment="franka"),
        MetadataSource("robocasa_door", _metadata(2, "robocasa"), 50),
    ]


def _mean(meta: DatasetMetadata, key: str = "state.eef_position") -> np.ndarray:
    return meta.stats_for(key).mean


def test_metadata_dict_round_trip():
    meta = _metadata(3, "metaworld")
    back = DatasetMetadata.from_dict(json.loads(json.dumps(meta.to_dict())))
    assert back.embodiment_tag == "metaworld"
    assert back.modalities["action"]["eef_position"] == meta.modalities["action"]["eef_position"]
    np.testing.assert_array_equal(_mean(back), _mean(meta))
    assert back.stats_for("action.nope") is None and back.fps is None


def test_variants_hold_their_own_statistics(sources):
    doc = build_group_metadata("uni", sources, stats_level="auto")
    top, variants = doc["uni"], doc["uni_variants"]
    assert set(variants) == {"libero_spatial", "libero_object", "robocasa_door", "franka", "robocasa"}
    assert [variants[n]["stats_level"] for n in variants] == ["task"] * 3 + ["embodiment"] * 2

    task = {s.name: select_metadata(doc, "uni", s.name) for s in sources}
    for s in sources:
        np.testing.assert_array_equal(_mean(task[s.name]), _mean(s.metadata))
    franka = select_metadata(doc, "uni", "franka", stats_selection_mode="embodiment")
    expected = merge_column_stats([(sources[0].metadata.stats_for("state.eef_position"), 100),
                                   (sources[1].metadata.stats_for("state.eef_position"), 300)])
    np.testing.assert_allclose(franka.stats_for("state.eef_position").std, expected.std)
    merged = select_metadata(doc, "uni", "merged")
    assert not np.allclose(_mean(merged), _mean(franka))
    assert not np.allclose(_mean(franka), _mean(task["libero_spatial"]))
    np.testing.assert_array_equal(_mean(select_metadata(doc, "uni", "robocasa")), _mean(task["robocasa_door"]))
    assert merged.embodiment_tag == "new_embodiment" and franka.embodiment_tag == "libero"
    assert top["num_frames"] == 450 and variants["franka"]["datasets"] == ["libero_spatial", "libero_object"]


def test_training_level_and_auto_selection(sources):
    doc = build_group_metadata("uni", sources, stats_level="auto")  # auto = per embodiment
    assert doc["uni"]["stats_level"] == "embodiment" and doc["uni"]["default_variant"] == "franka"
    assert training_variant(doc, "uni", "robocasa_door") == "robocasa"
    np.testing.assert_array_equal(_mean(select_metadata(doc, "uni")), _mean(select_metadata(doc, "uni", "franka")))

    task_doc = build_group_metadata("uni", sources, stats_level="task")
    assert training_variant(task_doc, "uni", "libero_object") == "libero_object"
    merged_doc = build_group_metadata("uni", sources, stats_level="merged")
    assert merged_doc["uni"]["default_variant"] is None
    np.testing.assert_array_equal(_mean(select_metadata(merged_doc, "uni")),
                                  _mean(select_metadata(merged_doc, "uni", "merged")))
    with pytest.raises(ValueError, match="stats_level"):
        build_group_metadata("uni", sources, stats_level="total")


def test_selection_errors(sources):
    doc = build_group_metadata("uni", sources)
    with pytest.raises(ValueError, match=r"no variant 'libero_10'; available: \['franka', 'libero_object'"):
        select_metadata(doc, "uni", "libero_10")
    with pytest.raises(ValueError, match="3 'task' variants.*libero_spatial"):
        select_metadata(doc, "uni", stats_selection_mode="task")
    with pytest.raises(ValueError, match="is a 'embodiment' variant"):
        select_metadata(doc, "uni", "franka", stats_selection_mode="task")
    with pytest.raises(ValueError, match="no group 'other'; groups: \\['uni'\\]"):
        select_metadata(doc, "other")
    with pytest.raises(ValueError, match="stats_selection_mode"):
        select_metadata(doc, "uni", stats_selection_mode="total")
    with pytest.raises(ValueError, match="duplicate dataset names"):
        build_group_metadata("uni", sources + sources[:1])
    with pytest.raises(ValueError, match="'merged' names the top-level"):
        build_group_metadata("uni", [MetadataSource("merged", sources[0].metadata, 10)])


def test_single_dataset_group_and_name_collision():
    doc = build_group_metadata("mw", [MetadataSource("metaworld", _metadata(5, "metaworld"), 80)])
    assert set(doc["mw_variants"]) == {"metaworld", "metaworld_embodiment"}
    for mode in ("auto", "task", "embodiment", "merged"):
        np.testing.assert_allclose(_mean(select_metadata(doc, "mw", stats_selection_mode=mode)),
                                   _mean(_metadata(5, "metaworld")))


def test_mismatched_widths_are_left_out_of_merged_levels_only():
    sources = [MetadataSource("a", _metadata(0, "r1"), 10), MetadataSource("b", _metadata(1, "r2", width=4), 10)]
    doc = build_group_metadata("g", sources)
    assert select_metadata(doc, "g", "merged").stats_for("state.eef_position") is None
    assert select_metadata(doc, "g", "b").stats_for("state.eef_position").dim == 4
    assert select_metadata(doc, "g", "merged").stats_for("action.gripper") is not None


def test_write_and_load_round_trip(sources, tmp_path):
    exp = tmp_path / "ckpt" / "experiment_cfg"
    file = write_group_metadata(exp, "uni", sources)
    assert file == exp / "uni_metadata.json"
    assert write_group_metadata(exp, "solo", sources[2:]) == exp / "solo_metadata.json"
    write_group_metadata(file, "solo", sources[2:])  # an explicit file keeps the groups already in it
    assert set(json.loads(file.read_text())) == {"uni", "uni_variants", "solo", "solo_variants"}
    for where in (tmp_path / "ckpt", exp, file):
        meta = load_metadata(where, "uni", metadata_variant="libero_object", stats_selection_mode="task")
        np.testing.assert_array_equal(_mean(meta), _mean(sources[1].metadata))
        np.testing.assert_array_equal(meta.stats_for("action.gripper").max, [1.0])
    with pytest.raises(FileNotFoundError, match="uni2_metadata.json"):
        load_metadata(tmp_path / "ckpt", "uni2")
    with pytest.raises(ValueError, match="uni_metadata.json: .*no variant"):
        load_metadata(exp, "uni", metadata_variant="nope")


def test_file_round_trip_is_lossless(tmp_path):
    """Every field survives write + load: statistics (also without quantiles), modalities, video, tag."""
    meta = _metadata(4, "robocasa")
    meta.modalities["video"] = {"wrist": VideoMeta((128, 96), 3, 20.0)}
    meta.modalities["state"]["eef_rotation"] = ModalityMeta(True, "quaternion", [4], True)
    meta.statistics["action"]["gripper"] = replace(meta.statistics["action"]["gripper"], q01=None, q99=None)
    file = write_group_metadata(tmp_path, "solo", [MetadataSource("door", meta, 40)])
    back = load_metadata(file, "solo", metadata_variant="door")
    assert back.to_dict() == meta.to_dict()
    assert back.modalities == meta.modalities and back.fps == 20.0
    assert not back.stats_for("action.gripper").has_quantiles
    merged = load_metadata(file, "solo", metadata_variant="merged")
    assert merged.modalities == meta.modalities and merged.embodiment_tag == "robocasa"
    for key in ("state.eef_position", "action.eef_position", "action.gripper"):
        for name in meta.stats_for(key).present_fields:
            np.testing.assert_allclose(getattr(merged.stats_for(key), name), getattr(meta.stats_for(key), name))


def test_reference_legacy_layout_is_readable():
    meta = _metadata(7, "libero").to_dict()
    doc = {"libero_posttrain": {"libero_10_no_noops": meta}}
    np.testing.assert_allclose(_mean(select_metadata(doc, "libero_posttrain")), _mean(_metadata(7, "libero")))


def test_build_dataset_metadata_from_fixture(lerobot_fixtures):
    from beingh.data.lerobot import LeRobotDataset

    dataset = LeRobotDataset(lerobot_fixtures / "v30_h264")
    config = get_data_config("metaworld")(embodiment_tag="metaworld")
    column_stats = {c: ColumnStats.from_values(dataset.column(c)) for c in config.source_columns()}
    meta = build_dataset_metadata(dataset, config, column_stats)
    assert meta.modalities["video"]["corner"].resolution == (224, 224)
    assert meta.modalities["video"]["corner"].fps == 20.0 and meta.fps == 20.0
    assert meta.modalities["action"]["eef_position"].absolute is False
    np.testing.assert_array_equal(meta.stats_for("state.gripper").max, column_stats["observation.state"].max[3:4])
    assert meta.embodiment_tag == "metaworld"


def test_metadata_records_the_data_config_and_merging_keeps_it_only_when_shared():
    from beingh.data.metadata import DatasetMetadata, MetadataSource, _merge_metadata

    def source(name, config):
        return MetadataSource(name, DatasetMetadata({"state": {}, "action": {}}, data_config=config), 10)

    assert DatasetMetadata.from_dict(DatasetMetadata({}, data_config="metaworld").to_dict()).data_config == "metaworld"
    assert "data_config" not in DatasetMetadata({}).to_dict()
    assert _merge_metadata([source("a", "metaworld"), source("b", "metaworld")], "t").data_config == "metaworld"
    assert _merge_metadata([source("a", "metaworld"), source("b", "libero_nonorm")], "t").data_config is None


@pytest.mark.parametrize("stats_level", ["task", "embodiment", "merged"])
def test_flat_metadata_holds_the_statistics_training_used(sources, tmp_path, stats_level):
    """`--save_merged_metadata False`: one entry, the statistics every dataset was normalized with."""
    franka = sources[:2]  # one embodiment, two datasets
    doc = build_group_metadata("g", franka, stats_level)
    used = select_metadata(doc, "g", training_variant(doc, "g", "libero_spatial") or "merged")
    if stats_level == "task":  # each dataset has its own statistics: one entry cannot hold them
        with pytest.raises(ValueError, match="2 different statistics"):
            training_statistics_only(doc, "g")
        single = build_group_metadata("g", franka[:1], stats_level)
        flat = training_statistics_only(single, "g")
        used = select_metadata(single, "g", "libero_spatial")
    else:
        flat = training_statistics_only(doc, "g")
    assert set(flat) == {"g"} and flat["g"]["default_variant"] is None
    loaded = select_metadata(flat, "g")
    np.testing.assert_array_equal(_mean(loaded), _mean(used))
    np.testing.assert_array_equal(loaded.stats_for("action.gripper").max, used.stats_for("action.gripper").max)
    with pytest.raises(ValueError, match="no variant 'libero_object'"):
        select_metadata(flat, "g", "libero_object")


def test_flat_file_replaces_variants_and_refuses_cross_embodiment_groups(sources, tmp_path):
    write_group_metadata(tmp_path, "uni", sources[:2])
    file = write_group_metadata(tmp_path, "uni", sources[:2], hierarchical=False)
    assert set(json.loads(file.read_text())) == {"uni"}  # the earlier `uni_variants` is gone
    with pytest.raises(ValueError, match="only the hierarchical metadata records them all"):
        write_group_metadata(tmp_path, "uni", sources, hierarchical=False)  # franka + robocasa
