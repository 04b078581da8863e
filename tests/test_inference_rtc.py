"""RTC bookkeeping across policy calls: shift by executed steps, delay declared or measured."""

from __future__ import annotations

import numpy as np
import pytest

from beingh.inference.rtc import GUIDANCE_FREE, TRAINED_RTC, RTCState, rtc_mode, stateless_prefix

T = 16


def chunk(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((T, 200)).astype(np.float32)


def test_no_prefix_before_first_chunk_or_without_executed_report():
    state = RTCState(T, declared_delay=3)
    assert state.prefix() is None
    state.record(chunk(0), inference_s=0.1)
    assert state.prefix() is None  # executed steps unknown: nothing is committed


def test_prefix_is_previous_chunk_shifted_by_executed_steps():
    state = RTCState(T, declared_delay=3)
    prev = chunk(0)
    state.record(prev, inference_s=0.1)
    state.advance(2)
    state.advance(3)
    prefix = state.prefix()
    assert prefix.length == 3
    np.testing.assert_array_equal(prefix.actions, prev[5:8])
    state.record(chunk(1), inference_s=0.1)
    assert state.executed_steps is None


def test_measured_delay_uses_wall_time_and_control_rate():
    state = RTCState(T, control_hz=20.0)
    prev = chunk(0)
    state.record(prev, inference_s=0.12)  # 2.4 control periods -> 3 steps committed
    state.advance(4)
    assert state.delay_steps() == 3
    np.testing.assert_array_equal(state.prefix().actions, prev[4:7])
    assert state.prefix(inference_delay=1).length == 1  # per-call override


def test_prefix_clamped_to_the_rest_of_the_chunk_and_reset():
    state = RTCState(T, declared_delay=5)
    state.record(chunk(0), inference_s=0.0)
    state.advance(14)
    assert state.prefix().length == 2
    state.advance(2)
    assert state.prefix() is None  # whole chunk executed
    state.reset()
    assert state.last_chunk is None and state.prefix() is None


def test_zero_delay_gives_no_prefix():
    state = RTCState(T, declared_delay=0)
    state.record(chunk(0), inference_s=1.0)
    state.advance(1)
    assert state.prefix() is None


def test_stateless_prefix_pads_by_holding_the_last_action():
    prev = chunk(0)[:2]
    prefix = stateless_prefix(prev[None], inference_delay=4, chunk_length=T)
    np.testing.assert_array_equal(prefix.actions, prev[[0, 1, 1, 1]])
    assert stateless_prefix(prev, 0, T) is None
    assert stateless_prefix(chunk(1), 40, T).length == T


@pytest.mark.parametrize("bad", [-1, 1.5, True, "2"])
def test_bad_step_counts_are_rejected(bad):
    state = RTCState(T, declared_delay=1)
    with pytest.raises(ValueError, match="executed_steps"):
        state.advance(bad)
    with pytest.raises(ValueError, match="inference_delay"):
        stateless_prefix(chunk(0), bad, T)


def test_bad_prev_chunk_shape_and_missing_delay_source():
    with pytest.raises(ValueError, match=r"prev_chunk must have shape \(T, 200\)"):
        stateless_prefix(np.zeros((4, 7)), 2, T)
    with pytest.raises(ValueError, match="control_hz"):
        RTCState(T)


def test_rtc_mode_names():
    assert rtc_mode(True) == TRAINED_RTC and rtc_mode(False) == GUIDANCE_FREE
