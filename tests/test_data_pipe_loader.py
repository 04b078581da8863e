"""Sampling (sharding, limits, strides, weights), the training loader on the fixtures, exact resume."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import LEROBOT_FIXTURES

from beingh.data.dataset_config import DatasetConfigError, DatasetEntry, DatasetGroup
from beingh.data.pipeline import DataArgs, SequenceArgs, build_train_loader
from beingh.data.sampler import DatasetItems, GroupIndex, ShardSampler, select_episodes
from beingh.data.tokenizer import load_tokenizer

FIXTURE_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tests" / "fixtures_v30.yaml"


def _entry(**kw) -> DatasetEntry:
    return DatasetEntry(name="d", data_config_name="metaworld", embodiment_tag="metaworld", **kw)


def _items(lengths, trajectory=False, tasks=None, **kw) -> DatasetItems:
    lengths = np.asarray(lengths)
    tasks = tasks or [("t",)] * len(lengths)
    return DatasetItems("test", _entry(**kw), np.arange(len(lengths)) + 100, lengths, tasks, trajectory, seed=42)


def _group_index(items: list[DatasetItems], gid=0, weight=1.0, mandatory=False) -> GroupIndex:
    group = DatasetGroup(name=f"g{gid}", datasets=(), weight=weight, is_mandatory=mandatory)
    return GroupIndex(gid, group, items, seed=42)


def test_shards_cover_every_frame_once_per_epoch():
    index = _group_index([_items([5, 7, 3]), _items([4, 6])])
    seen = []
    for shard in range(4):
        dataset, episode, frame, total = index.shard(0, shard, 4)
        seen += list(zip(dataset.tolist(), episode.tolist(), frame.tolist()))
    assert total == 25 and len(seen) == 25 and len(set(seen)) == 25
    lengths = {(0, 100): 5, (0, 101): 7, (0, 102): 3, (1, 100): 4, (1, 101): 6}
    assert all(0 <= f < lengths[(d, e)] for d, e, f in seen)
    # Identical on every process, different across epochs.
    assert np.array_equal(index.shard(0, 1, 4)[2], index.shard(0, 1, 4)[2])
    assert not np.array_equal(index.shard(0, 1, 4)[2], index.shard(1, 1, 4)[2])


def test_frame_step_size_strides_from_a_random_offset():
    index = _group_index([_items([40, 41], frame_step_size=4)])
    for epoch in range(3):
        _, episode, frame, total = index.shard(epoch, 0, 1)
        for e in (100, 101):
            frames = np.sort(frame[episode == e])
            assert len(set((frames % 4).tolist())) == 1 and np.all(np.diff(frames) == 4)
            assert frames[0] < 4 and frames[-1] + 4 >= [40, 41][e - 100]


def test_episode_limits_are_deterministic():
    lengths = np.full(10, 5)
    tasks = [("a",)] * 6 + [("b",)] * 4
    kept = select_episodes(np.arange(10), lengths, tasks, _entry(num_used_episodes_per_task=2), seed=42)
    assert len(kept) == 4 and Counter(tasks[i] for i in kept) == {("a",): 2, ("b",): 2}
    again = select_episodes(np.arange(10), lengths, tasks, _entry(num_used_episodes_per_task=2), seed=42)
    assert np.array_equal(kept, again)
    kept = select_episodes(np.arange(10), lengths, tasks, _entry(num_used_episodes_per_dataset=3), seed=42)
    assert len(kept) == 3
    lengths[[1, 3]] = 0
    assert not {1, 3} & set(select_episodes(np.arange(10), lengths, tasks, _entry(), seed=0).tolist())


def test_frame_limit_and_errors():
    items = _items([10, 10, 10], num_used_frames_per_dataset=7)
    _, episode, frame, total = _group_index([items]).shard(0, 0, 1)
    assert total == 7 and len(set(zip(episode.tolist(), frame.tolist()))) == 7
    with pytest.raises(DatasetConfigError, match="no episodes left"):
        _items([0, 0])
    with pytest.raises(DatasetConfigError, match="not both"):
        _items([10], frame_step_size=2, num_used_frames_per_dataset=3)
    with pytest.raises(DatasetConfigError, match="step sampling only"):
        _items([10], trajectory=True, frame_step_size=2)


def test_trajectory_mode_draws_frames_at_visit():
    sampler = ShardSampler([_group_index([_items([3, 50], trajectory=True)])], seed=0, shard=0, num_shards=1)
    keys = [sampler.next_key(0) for _ in range(40)]
    assert Counter(k.episode for k in keys) == {100: 20, 101: 20}
    assert all(k.frame < (3 if k.episode == 100 else 50) for k in keys)
    assert len({k.frame for k in keys if k.episode == 101}) > 5


def test_group_weights_and_zero_weight():
    groups = [_group_index([_items([50])], 0, weight=3.0), _group_index([_items([50])], 1, weight=1.0),
              _group_index([_items([50])], 2, weight=0.0)]
    sampler = ShardSampler(groups, seed=0, shard=0, num_shards=1)
    counts = Counter(sampler.next_group() for _ in range(4000))
    assert counts[2] == 0 and 2.6 < counts[0] / counts[1] < 3.4
    with pytest.raises(DatasetConfigError, match="weight 0"):
        ShardSampler([groups[2]], seed=0, shard=0, num_shards=1)


def test_sampler_state_roundtrip_is_exact():
    make = lambda: ShardSampler([_group_index([_items([7, 9], frame_step_size=2)])], seed=3, shard=1, num_shards=2)  # noqa: E731
    ref = make()
    expected = [ref.next_key(0) for _ in range(30)]
    first = make()
    head = [first.next_key(0) for _ in range(11)]
    resumed = make()
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    assert head + [resumed.next_key(0) for _ in range(19)] == expected
    with pytest.raises(ValueError, match="shard"):
        ShardSampler([_group_index([_items([7])])], seed=3, shard=0, num_shards=2).load_state_dict(first.state_dict())


# ---------------------------------------------------------------------------------------------- loader


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer_dir):
    return load_tokenizer(tiny_tokenizer_dir)


@pytest.fixture(scope="module")
def stats_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("stats")


# Fixture samples are 74 tokens: 4 fit under 297, the 5th overflows, so every pack leaves a full buffer.
SEQ = SequenceArgs(max_num_tokens=300, expected_num_tokens=297, prefer_buffer_before=120, max_buffer_size=2,
                   max_num_tokens_per_sample=300)


def _loader(tokenizer, stats_cache, num_workers=0, config=FIXTURE_CONFIG, rank=0, world_size=1, **data_kw):
    data_args = DataArgs(force_image_size=28, num_workers=num_workers, prefetch_factor=2, **data_kw)
    return build_train_loader(config, tokenizer, data_args, SEQ, action_chunk_length=4, rank=rank,
                              world_size=world_size, seed=5, stats_cache_dir=stats_cache)


def _fingerprint(pack) -> tuple:
    return (tuple(pack.sample_lens), round(float(pack.pixel_values.double().sum()), 4),
            round(float(pack.state.double().sum()), 5), round(float(pack.action.double().sum()), 5))


def test_packs_from_fixtures(tokenizer, stats_cache):
    pack = next(iter(_loader(tokenizer, stats_cache)))
    assert 250 <= pack.num_tokens <= 300 and pack.pixel_values.shape[1:] == (3, 28, 28)
    assert pack.pixel_values.shape[0] == pack.num_samples  # one camera
    assert pack.action.shape == (pack.num_samples, 4, 200) and pack.embodiment_ids.unique().tolist() == [2]
    assert pack.action_mask[:, :, :3].any() and not pack.action_mask[:, :, 3:18].any()
    assert sum(pack.sample_lens) == pack.num_tokens


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_mid_epoch_is_exact(tokenizer, stats_cache, num_workers):
    reference = iter(_loader(tokenizer, stats_cache, num_workers))
    expected = [_fingerprint(next(reference)) for _ in range(7)]
    del reference

    loader = _loader(tokenizer, stats_cache, num_workers)
    stream = iter(loader)
    head = [_fingerprint(next(stream)) for _ in range(3)]
    state = json.loads(json.dumps(loader.state_dict()))
    del stream
    assert head == expected[:3] and state["consumed"] == 3
    assert any(stream_state["buffer"] for stream_state in state["streams"].values())  # the buffer is restored too

    resumed = _loader(tokenizer, stats_cache, num_workers)
    resumed.load_state_dict(state)
    stream = iter(resumed)
    assert [_fingerprint(next(stream)) for _ in range(4)] == expected[3:]


def test_state_mismatch_is_rejected(tokenizer, stats_cache):
    state = _loader(tokenizer, stats_cache, 0).state_dict()
    with pytest.raises(ValueError, match="num_streams"):
        _loader(tokenizer, stats_cache, 2).load_state_dict(state)


def test_ranks_see_disjoint_frames(tokenizer, stats_cache, tmp_path):
    config = tmp_path / "one.yaml"
    config.write_text(yaml.safe_dump({"one": {
        "dataset_names": [str(LEROBOT_FIXTURES / "v30_av1")],
        "data_config_names": "metaworld", "embodiment_tags": "metaworld"}}))
    keys = []
    for rank in range(2):
        loader = _loader(tokenizer, stats_cache, config=config, rank=rank, world_size=2)
        stream = loader.make_stream(0)
        keys.append([stream.sampler.next_key(0) for _ in range(55)])
    frames = [{(k.episode, k.frame) for k in rank_keys} for rank_keys in keys]
    assert len(frames[0]) == len(frames[1]) == 55 and not frames[0] & frames[1]


def test_group_metadata_written(tokenizer, stats_cache, tmp_path):
    loader = _loader(tokenizer, stats_cache)
    (meta,) = loader.group_metadata()
    assert meta.name == "fixtures_v30" and len(meta.sources) == 2
    (path,) = loader.write_metadata(tmp_path)
    document = json.loads(path.read_text())
    assert path.name == "fixtures_v30_metadata.json"
    assert set(document["fixtures_v30_variants"]) >= {s.name for s in meta.sources} | {"metaworld"}


def test_bad_dataset_is_reported_with_the_group(tokenizer, stats_cache, tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({"bad": {
        "dataset_names": [str(LEROBOT_FIXTURES / "v30_av1")],
        "data_config_names": "libero_nonorm", "embodiment_tags": "libero"}}))
    with pytest.raises(DatasetConfigError, match="group 'bad'.*observation.images"):
        _loader(tokenizer, stats_cache, config=config)


def test_views_are_images_of_the_right_frame(tokenizer, stats_cache):
    """The packed pixel values are the eval-free train transform of the sampled frame (sanity: not constant)."""
    loader = _loader(tokenizer, stats_cache)
    pack = next(iter(loader))
    per_image = pack.pixel_values.flatten(1).std(dim=1)
    assert torch.all(per_image > 0.05)


def test_mandatory_group_opens_every_pack(tokenizer, stats_cache, tmp_path):
    fixtures = LEROBOT_FIXTURES
    config = tmp_path / "two_groups.yaml"
    config.write_text(yaml.safe_dump({
        "main": {"dataset_names": [str(fixtures / "v30_av1")], "data_config_names": "metaworld",
                 "embodiment_tags": "metaworld"},
        "always": {"dataset_names": [str(fixtures / "v30_h264")], "data_config_names": "metaworld",
                   "embodiment_tags": "libero", "weight": 0, "is_mandatory": True},
    }))
    stream = iter(_loader(tokenizer, stats_cache, config=config))
    for _ in range(4):
        ids = next(stream).embodiment_ids.tolist()
        assert ids[0] == 0 and ids.count(0) == 1 and set(ids[1:]) == {2}
