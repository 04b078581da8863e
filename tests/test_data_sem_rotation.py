"""Rotation conversions: round trips (incl. zero and near-pi angles) and agreement with scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from beingh.data.rotation import (
    EULER_TYPES,
    ROTATION_DIMS,
    axis_angle_to_matrix,
    axis_angle_to_quaternion,
    convert_rotation,
    from_matrix,
    matrix_to_axis_angle,
    quaternion_to_axis_angle,
    to_matrix,
)


def _random_axis_angle(rng: np.random.Generator, n: int, max_angle: float = math.pi) -> np.ndarray:
    axis = rng.normal(size=(n, 3))
    axis /= np.linalg.norm(axis, axis=1, keepdims=True)
    return axis * rng.uniform(0, max_angle, size=(n, 1))


def test_axis_angle_matrix_matches_scipy_and_round_trips():
    aa = _random_axis_angle(np.random.default_rng(0), 200, max_angle=math.pi - 1e-3)
    m = axis_angle_to_matrix(aa)
    np.testing.assert_allclose(m, Rotation.from_rotvec(aa).as_matrix(), atol=1e-12)
    np.testing.assert_allclose(m @ np.swapaxes(m, -1, -2), np.broadcast_to(np.eye(3), m.shape), atol=1e-12)
    np.testing.assert_allclose(matrix_to_axis_angle(m), aa, atol=1e-9)


@pytest.mark.parametrize("angle", [0.0, 1e-12, 1e-8, 1e-6, 1e-3, math.pi - 1e-6, math.pi - 1e-9, math.pi])
def test_extreme_angles_round_trip(angle):
    axis = np.array([0.3, -0.5, 0.8]) / np.linalg.norm([0.3, -0.5, 0.8])
    aa = axis * angle
    m = axis_angle_to_matrix(aa)
    back = matrix_to_axis_angle(m)
    assert np.all(np.isfinite(back))
    np.testing.assert_allclose(axis_angle_to_matrix(back), m, atol=1e-9)
    if angle < math.pi - 1e-7:  # at pi the axis sign is arbitrary
        np.testing.assert_allclose(back, aa, atol=1e-8)
    np.testing.assert_allclose(quaternion_to_axis_angle(axis_angle_to_quaternion(aa)), back, atol=1e-8)


def test_quaternion_orders_and_sign():
    rot = Rotation.from_rotvec(_random_axis_angle(np.random.default_rng(1), 50))
    xyzw = rot.as_quat()  # scipy is scalar-last
    wxyz = np.roll(xyzw, 1, axis=-1)
    aa = rot.as_rotvec()
    np.testing.assert_allclose(convert_rotation(wxyz, "quaternion", "axis_angle"), aa, atol=1e-9)
    np.testing.assert_allclose(convert_rotation(-wxyz, "quaternion", "axis_angle"), aa, atol=1e-9)
    np.testing.assert_allclose(convert_rotation(xyzw, "quaternion_xyzw", "axis_angle"), aa, atol=1e-9)
    np.testing.assert_allclose(to_matrix(xyzw, "quaternion_xyzw"), rot.as_matrix(), atol=1e-12)
    # Reading xyzw data as wxyz (the released RoboCasa config) gives a different rotation.
    assert not np.allclose(convert_rotation(xyzw, "quaternion", "axis_angle"), aa, atol=1e-3)


@pytest.mark.parametrize("rotation_type", sorted(ROTATION_DIMS))
def test_every_type_round_trips_through_the_matrix(rotation_type):
    m = Rotation.from_rotvec(_random_axis_angle(np.random.default_rng(2), 64, max_angle=3.0)).as_matrix()
    x = from_matrix(m, rotation_type)
    assert x.shape == (64, ROTATION_DIMS[rotation_type])
    np.testing.assert_allclose(to_matrix(x, rotation_type), m, atol=1e-9)
    aa = convert_rotation(x, rotation_type, "axis_angle")
    np.testing.assert_allclose(convert_rotation(aa, "axis_angle", rotation_type), x, atol=1e-8)


@pytest.mark.parametrize("rotation_type", EULER_TYPES)
def test_euler_matches_scipy_intrinsic(rotation_type):
    letters = rotation_type.rsplit("_", 1)[1]
    seq = letters.translate(str.maketrans("rpy", "XYZ"))
    angles = np.random.default_rng(3).uniform([-3, -1.5, -3], [3, 1.5, 3], size=(32, 3))
    np.testing.assert_allclose(to_matrix(angles, rotation_type), Rotation.from_euler(seq, angles).as_matrix(),
                               atol=1e-12)
    np.testing.assert_allclose(from_matrix(to_matrix(angles, rotation_type), rotation_type), angles, atol=1e-9)


def test_rotation_6d_reorthonormalizes():
    m = Rotation.from_rotvec([0.4, -1.0, 2.0]).as_matrix()
    noisy = from_matrix(m, "rotation_6d") * 1.7 + np.array([0, 0, 0, 0.01, 0, 0])
    out = to_matrix(noisy, "rotation_6d")
    np.testing.assert_allclose(out @ out.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(out) == pytest.approx(1.0)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="last dim 3"):
        axis_angle_to_matrix(np.zeros(4))
    with pytest.raises(ValueError, match="unknown rotation type"):
        convert_rotation(np.zeros(3), "axis_angle", "quaternion_wxyz")
    with pytest.raises(ValueError, match="zero quaternion"):
        to_matrix(np.zeros(4), "quaternion")
