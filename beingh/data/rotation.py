"""Rotation representation conversions in numpy (no pytorch3d), batched over leading dims.

The unified space stores rotations as axis-angle (3 numbers). Datasets may store quaternions,
6D rotations, matrices or Euler angles; `convert_rotation` goes between any two through the matrix.

Conventions:
- `quaternion` is real-first (w, x, y, z), as in the released models (pytorch3d's convention).
  `quaternion_xyzw` is real-last (x, y, z, w), the order robosuite/scipy use. The released RoboCasa
  config declares its xyzw base quaternion as `quaternion`, so its axis-angle is not the true
  rotation (reference/upstream_data.md §10.7); the built-in config keeps that to stay compatible
  with released checkpoints, new configs should declare the order their data really has.
- `rotation_6d` is the first two rows of the matrix (Zhou et al.), re-orthonormalized by Gram-Schmidt.
- `euler_angles_<abc>` with letters r/p/y for rotations about X/Y/Z: R = R_a(e0) @ R_b(e1) @ R_c(e2)
  (intrinsic, as pytorch3d's `euler_angles_to_matrix(..., "XYZ")` for `rpy`). Only Tait-Bryan orders
  (three distinct axes) exist; the middle angle is in [-pi/2, pi/2] and gimbal lock is ambiguous.
- Axis-angle outputs have angle in [0, pi]; at exactly pi the sign of the axis is arbitrary.
"""

from __future__ import annotations

import numpy as np

_EULER_AXES = {"r": 0, "p": 1, "y": 2}
EULER_TYPES = tuple(
    f"euler_angles_{a}{b}{c}" for a in "rpy" for b in "rpy" for c in "rpy" if len({a, b, c}) == 3
)
ROTATION_DIMS: dict[str, int] = {
    "axis_angle": 3,
    "quaternion": 4,
    "quaternion_xyzw": 4,
    "rotation_6d": 6,
    "matrix": 9,
    **{name: 3 for name in EULER_TYPES},
}
"""Rotation type -> number of stored values (a matrix is stored flattened, row-major)."""

_SMALL_ANGLE = 1e-6


def rotation_dim(rotation_type: str) -> int:
    if rotation_type not in ROTATION_DIMS:
        raise ValueError(f"unknown rotation type {rotation_type!r}; known: {sorted(ROTATION_DIMS)}")
    return ROTATION_DIMS[rotation_type]


def _check_last_dim(x: np.ndarray, size: int, what: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.shape[-1:] != (size,):
        raise ValueError(f"{what}: expected last dim {size}, got shape {x.shape}")
    return x


def axis_angle_to_matrix(axis_angle: np.ndarray) -> np.ndarray:
    """Rodrigues' formula; (..., 3) -> (..., 3, 3). Uses Taylor terms below 1e-6 rad."""
    aa = _check_last_dim(axis_angle, 3, "axis_angle")
    theta = np.linalg.norm(aa, axis=-1)[..., None, None]
    small = theta < _SMALL_ANGLE
    safe = np.where(small, 1.0, theta)
    a = np.where(small, 1.0 - theta**2 / 6.0, np.sin(safe) / safe)
    b = np.where(small, 0.5 - theta**2 / 24.0, (1.0 - np.cos(safe)) / safe**2)
    k = _skew(aa)
    return np.eye(3) + a * k + b * (k @ k)


def _skew(v: np.ndarray) -> np.ndarray:
    x, y, z = v[..., 0], v[..., 1], v[..., 2]
    zero = np.zeros_like(x)
    return np.stack(
        [np.stack([zero, -z, y], -1), np.stack([z, zero, -x], -1), np.stack([-y, x, zero], -1)], -2
    )


def quaternion_to_matrix(quaternion: np.ndarray) -> np.ndarray:
    """(w, x, y, z) -> rotation matrix; the quaternion is normalized first."""
    q = _check_last_dim(quaternion, 4, "quaternion")
    norm = np.linalg.norm(q, axis=-1, keepdims=True)
    if np.any(norm < 1e-12):
        raise ValueError("quaternion_to_matrix: got a zero quaternion")
    w, x, y, z = np.moveaxis(q / norm, -1, 0)
    rows = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ]
    return np.stack([np.stack(row, -1) for row in rows], -2)


def matrix_to_quaternion(matrix: np.ndarray) -> np.ndarray:
    """Rotation matrix -> (w, x, y, z) with w >= 0, by Shepperd's method (stable for every angle)."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape[-2:] != (3, 3):
        raise ValueError(f"matrix: expected (..., 3, 3), got shape {m.shape}")
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    # Four candidate solutions, each accurate when its leading component is the largest.
    candidates = np.stack(
        [
            np.stack([1 + m00 + m11 + m22, m[..., 2, 1] - m[..., 1, 2],
                      m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]], -1),
            np.stack([m[..., 2, 1] - m[..., 1, 2], 1 + m00 - m11 - m22,
                      m[..., 1, 0] + m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0]], -1),
            np.stack([m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] + m[..., 0, 1],
                      1 - m00 + m11 - m22, m[..., 2, 1] + m[..., 1, 2]], -1),
            np.stack([m[..., 1, 0] - m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0],
                      m[..., 2, 1] + m[..., 1, 2], 1 - m00 - m11 + m22], -1),
        ],
        -2,
    )
    leading = np.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1)
    best = np.argmax(leading, axis=-1)
    q = np.take_along_axis(candidates, best[..., None, None], axis=-2)[..., 0, :]
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    return np.where(q[..., :1] < 0, -q, q)


def quaternion_to_axis_angle(quaternion: np.ndarray) -> np.ndarray:
    """(w, x, y, z) -> axis-angle with angle in [0, pi] (q and -q give the same result)."""
    q = _check_last_dim(quaternion, 4, "quaternion")
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    q = np.where(q[..., :1] < 0, -q, q)
    vec = q[..., 1:]
    sin_half = np.linalg.norm(vec, axis=-1, keepdims=True)
    half = np.arctan2(sin_half, q[..., :1])
    angle = 2.0 * half
    small = angle < _SMALL_ANGLE
    # axis * angle = vec * angle / sin(angle / 2); the ratio tends to 2 + angle^2 / 12.
    ratio = np.where(small, 2.0 + angle**2 / 12.0, angle / np.where(small, 1.0, sin_half))
    return vec * ratio


def axis_angle_to_quaternion(axis_angle: np.ndarray) -> np.ndarray:
    aa = _check_last_dim(axis_angle, 3, "axis_angle")
    angle = np.linalg.norm(aa, axis=-1, keepdims=True)
    small = angle < _SMALL_ANGLE
    scale = np.where(small, 0.5 - angle**2 / 48.0, np.sin(angle / 2) / np.where(small, 1.0, angle))
    return np.concatenate([np.cos(angle / 2), aa * scale], -1)


def matrix_to_axis_angle(matrix: np.ndarray) -> np.ndarray:
    return quaternion_to_axis_angle(matrix_to_quaternion(matrix))


def rotation_6d_to_matrix(rot6d: np.ndarray) -> np.ndarray:
    """First two matrix rows (6 values) -> matrix, by Gram-Schmidt."""
    r = _check_last_dim(rot6d, 6, "rotation_6d")
    a1, a2 = r[..., :3], r[..., 3:]
    b1 = a1 / np.linalg.norm(a1, axis=-1, keepdims=True)
    b2 = a2 - np.sum(b1 * a2, axis=-1, keepdims=True) * b1
    b2 = b2 / np.linalg.norm(b2, axis=-1, keepdims=True)
    return np.stack([b1, b2, np.cross(b1, b2)], -2)


def matrix_to_rotation_6d(matrix: np.ndarray) -> np.ndarray:
    m = np.asarray(matrix, dtype=np.float64)
    return m[..., :2, :].reshape(*m.shape[:-2], 6)


def _axis_rotation(axis: int, angle: np.ndarray) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    one, zero = np.ones_like(angle), np.zeros_like(angle)
    if axis == 0:
        rows = [[one, zero, zero], [zero, c, -s], [zero, s, c]]
    elif axis == 1:
        rows = [[c, zero, s], [zero, one, zero], [-s, zero, c]]
    else:
        rows = [[c, -s, zero], [s, c, zero], [zero, zero, one]]
    return np.stack([np.stack(row, -1) for row in rows], -2)


def _euler_axes(rotation_type: str) -> tuple[int, int, int]:
    if rotation_type not in EULER_TYPES:
        raise ValueError(f"unknown Euler convention {rotation_type!r}; known: {list(EULER_TYPES)}")
    i, j, k = (_EULER_AXES[c] for c in rotation_type.rsplit("_", 1)[1])
    return i, j, k


def euler_to_matrix(angles: np.ndarray, rotation_type: str) -> np.ndarray:
    e = _check_last_dim(angles, 3, rotation_type)
    i, j, k = _euler_axes(rotation_type)
    return _axis_rotation(i, e[..., 0]) @ _axis_rotation(j, e[..., 1]) @ _axis_rotation(k, e[..., 2])


def matrix_to_euler(matrix: np.ndarray, rotation_type: str) -> np.ndarray:
    """Inverse of `euler_to_matrix`: for R = R_i(a) R_j(b) R_k(c), R[i, k] = s sin(b) where s = +1 for
    cyclic axis orders (xyz, yzx, zxy) and -1 otherwise."""
    m = np.asarray(matrix, dtype=np.float64)
    i, j, k = _euler_axes(rotation_type)
    s = 1.0 if (i, j, k) in ((0, 1, 2), (1, 2, 0), (2, 0, 1)) else -1.0
    b = np.arcsin(np.clip(s * m[..., i, k], -1.0, 1.0))
    a = np.arctan2(-s * m[..., j, k], m[..., k, k])
    c = np.arctan2(-s * m[..., i, j], m[..., i, i])
    return np.stack([a, b, c], -1)


def to_matrix(x: np.ndarray, rotation_type: str) -> np.ndarray:
    """Any supported representation (..., d) -> (..., 3, 3)."""
    x = _check_last_dim(x, rotation_dim(rotation_type), rotation_type)
    if rotation_type == "axis_angle":
        return axis_angle_to_matrix(x)
    if rotation_type == "quaternion":
        return quaternion_to_matrix(x)
    if rotation_type == "quaternion_xyzw":
        return quaternion_to_matrix(np.roll(x, 1, axis=-1))
    if rotation_type == "rotation_6d":
        return rotation_6d_to_matrix(x)
    if rotation_type == "matrix":
        return x.reshape(*x.shape[:-1], 3, 3)
    return euler_to_matrix(x, rotation_type)


def from_matrix(matrix: np.ndarray, rotation_type: str) -> np.ndarray:
    """(..., 3, 3) -> the representation's (..., d)."""
    rotation_dim(rotation_type)
    if rotation_type == "axis_angle":
        return matrix_to_axis_angle(matrix)
    if rotation_type == "quaternion":
        return matrix_to_quaternion(matrix)
    if rotation_type == "quaternion_xyzw":
        return np.roll(matrix_to_quaternion(matrix), -1, axis=-1)
    if rotation_type == "rotation_6d":
        return matrix_to_rotation_6d(matrix)
    if rotation_type == "matrix":
        return np.asarray(matrix, dtype=np.float64).reshape(*np.shape(matrix)[:-2], 9)
    return matrix_to_euler(matrix, rotation_type)


def convert_rotation(x: np.ndarray, from_type: str, to_type: str) -> np.ndarray:
    """Convert (..., d_from) to (..., d_to) in float64. Identity when the types match."""
    if from_type == to_type:
        return _check_last_dim(x, rotation_dim(from_type), from_type)
    if {from_type, to_type} == {"quaternion", "axis_angle"}:
        if from_type == "quaternion":
            return quaternion_to_axis_angle(x)
        return axis_angle_to_quaternion(x)
    return from_matrix(to_matrix(x, from_type), to_type)
