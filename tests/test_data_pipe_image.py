"""Image transforms: shapes, determinism, eval geometry, the fused colour-jitter affine, hue vs colorsys."""

from __future__ import annotations

import colorsys

import numpy as np
import pytest
import torch

from beingh.data.image import (
    GRAY_WEIGHTS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_image_transform,
    center_crop_offsets,
    color_jitter_affine,
    hue_rotation,
    jitter_affine,
    resize_shape,
)


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _unnormalize(x: torch.Tensor) -> torch.Tensor:
    return x * torch.tensor(IMAGENET_STD).view(3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(3, 1, 1)


@pytest.mark.parametrize("shape", [(224, 224), (96, 128), (200, 100)])
@pytest.mark.parametrize("train", [True, False])
def test_output_shape_and_range(shape, train):
    out = build_image_transform(64, train)(_image(*shape), np.random.default_rng(0))
    assert out.shape == (3, 64, 64) and out.dtype == torch.float32
    pixels = _unnormalize(out)
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5


def test_eval_is_deterministic_and_exact_when_already_square():
    transform = build_image_transform(32, train=False)
    image = _image(32, 32)
    out = transform(image)
    expected = torch.from_numpy(image).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(_unnormalize(out), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(transform(_image(40, 80)), transform(_image(40, 80)))


def test_eval_center_crops_after_resizing_shorter_side():
    image = np.zeros((32, 64, 3), dtype=np.uint8)
    image[:, 16:48] = 255  # the central square is white, the sides black
    out = _unnormalize(build_image_transform(32, train=False)(image))
    assert out[:, :, 2:-2].min() > 0.99


def test_eval_geometry_follows_torchvision_arithmetic():
    """Resize(S): the long side is int(S * long / short), truncated; CenterCrop(S): offsets are Python's
    round((side - S) / 2), half to even (torchvision.transforms.functional.center_crop)."""
    assert resize_shape(480, 640, 224) == (224, 298)  # 298.67: rounding would give 299
    assert resize_shape(640, 480, 224) == (298, 224)
    assert resize_shape(56, 75, 56) == (56, 75)
    assert center_crop_offsets(224, 298, 224) == (0, 37)
    assert center_crop_offsets(224, 299, 224) == (0, 38)  # 37.5 -> 38
    assert center_crop_offsets(224, 297, 224) == (0, 36)  # 36.5 -> 36 (half to even)
    assert center_crop_offsets(75, 56, 56) == (10, 0)  # 9.5 -> 10; flooring would give 9
    with pytest.raises(ValueError, match="cannot center-crop"):
        center_crop_offsets(50, 60, 56)


def test_eval_crop_takes_the_torchvision_pixels():
    """A 56 x 75 image needs no resize at 56 px: the crop must start at column 10 exactly."""
    image = np.zeros((56, 75, 3), dtype=np.uint8)
    image[..., 0] = np.arange(75, dtype=np.uint8)[None, :]  # red = column index
    out = _unnormalize(build_image_transform(56, train=False)(image))
    torch.testing.assert_close(out[0, 0] * 255, torch.arange(10, 66, dtype=torch.float32), atol=1e-3, rtol=0)
    resized = build_image_transform(224, train=False)._eval_geometry(torch.zeros(3, 480, 640, dtype=torch.uint8))
    assert resized.shape == (3, 224, 224)


def test_train_is_reproducible_with_the_same_rng_and_varies_otherwise():
    transform = build_image_transform(48, train=True)
    image = _image(60, 80)
    a = transform(image, np.random.default_rng(7))
    b = transform(image, np.random.default_rng(7))
    c = transform(image, np.random.default_rng(8))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)


def _hsv_shift(rgb: np.ndarray, shift: float) -> np.ndarray:
    hsv = [colorsys.rgb_to_hsv(*c) for c in rgb]
    return np.array([colorsys.hsv_to_rgb((h + shift) % 1.0, s, v) for h, s, v in hsv])


@pytest.mark.parametrize("shift", [0.08, -0.08, 0.03])
def test_hue_rotation_approximates_the_hsv_hue_shift_on_typical_colours(shift):
    """Stated tolerance for |shift| <= 0.08 on colours with HSV saturation and value in [0.3, 1]:
    hue within 0.025 turns (median 0.006), saturation, value and RGB within 0.2."""
    rng = np.random.default_rng(0)
    hsv = np.column_stack([rng.random(300), rng.uniform(0.3, 1.0, 300), rng.uniform(0.3, 1.0, 300)])
    rgb = np.array([colorsys.hsv_to_rgb(*c) for c in hsv])
    out = np.clip(rgb @ hue_rotation(shift).T, 0, 1)
    expected = _hsv_shift(rgb, shift)
    got_hsv = np.array([colorsys.rgb_to_hsv(*c) for c in out])
    expected_hsv = np.array([colorsys.rgb_to_hsv(*c) for c in expected])
    hue_error = np.abs((got_hsv[:, 0] - expected_hsv[:, 0] + 0.5) % 1.0 - 0.5)
    assert hue_error.max() < 0.025 and np.median(hue_error) < 0.006
    np.testing.assert_allclose(got_hsv[:, 1:], expected_hsv[:, 1:], atol=0.2)
    np.testing.assert_allclose(out, expected, atol=0.2)
    np.testing.assert_allclose(hue_rotation(shift) @ np.full(3, 0.4), np.full(3, 0.4), atol=1e-12)


def test_neutral_jitter_is_the_identity():
    for order in ([0, 1, 2, 3], [3, 2, 1, 0]):
        matrix, offset = jitter_affine(1.0, 1.0, 1.0, 0.0, np.array(order), np.array([0.2, 0.5, 0.7]))
        np.testing.assert_allclose(matrix, np.eye(3), atol=1e-12)
        np.testing.assert_allclose(offset, np.zeros(3), atol=1e-12)


def _sequential_jitter(x: np.ndarray, brightness, contrast, saturation, hue, order) -> np.ndarray:
    """The ColorJitter steps one after another on (N, 3) pixels (torchvision's maths, without clamps)."""
    for op in order:
        gray = x @ GRAY_WEIGHTS
        if op == 0:
            x = brightness * x
        elif op == 1:
            x = contrast * x + (1 - contrast) * gray.mean()
        elif op == 2:
            x = saturation * x + (1 - saturation) * gray[:, None]
        else:
            x = x @ hue_rotation(hue).T
    return x


@pytest.mark.parametrize("order", [[0, 1, 2, 3], [2, 3, 1, 0], [3, 1, 0, 2]])
def test_jitter_affine_equals_the_steps_in_their_order(order):
    pixels = np.random.default_rng(1).uniform(0.3, 0.7, (50, 3))
    factors = (1.2, 0.7, 1.4, 0.06)
    matrix, offset = jitter_affine(*factors, np.array(order), pixels.mean(0))
    np.testing.assert_allclose(pixels @ matrix.T + offset, _sequential_jitter(pixels, *factors, order), atol=1e-12)


def test_train_transform_is_the_jitter_affine_then_clamp_and_normalize():
    transform = build_image_transform(24, train=True)
    image = _image(30, 40, seed=4)
    out = transform(image, np.random.default_rng(3))
    rng = np.random.default_rng(3)
    geometry = transform._train_geometry(torch.from_numpy(image).permute(2, 0, 1), rng)
    pixels = geometry.permute(1, 2, 0).reshape(-1, 3).double().numpy() / 255
    matrix, offset = color_jitter_affine(rng, pixels.mean(0))
    expected = (np.clip(pixels @ matrix.T + offset, 0, 1) - IMAGENET_MEAN) / IMAGENET_STD
    np.testing.assert_allclose(out.numpy(), expected.T.reshape(3, 24, 24), atol=1e-5)


def test_color_jitter_keeps_gray_images_gray():
    rng = np.random.default_rng(0)
    for _ in range(5):
        matrix, offset = color_jitter_affine(rng, np.full(3, 0.5))
        out = matrix @ np.full(3, 0.5) + offset
        np.testing.assert_allclose(out, np.full(3, out[0]), atol=1e-12)


def test_rejects_bad_images():
    transform = build_image_transform(32, train=False)
    with pytest.raises(ValueError, match="uint8"):
        transform(np.zeros((32, 32, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        transform(np.zeros((32, 32), dtype=np.uint8))
