"""Image transforms: shapes, determinism, eval geometry, hue correctness against colorsys."""

from __future__ import annotations

import colorsys

import numpy as np
import pytest
import torch

from beingh.data.image import IMAGENET_MEAN, IMAGENET_STD, adjust_hue, build_image_transform, color_jitter


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


def test_train_is_reproducible_with_the_same_rng_and_varies_otherwise():
    transform = build_image_transform(48, train=True)
    image = _image(60, 80)
    a = transform(image, np.random.default_rng(7))
    b = transform(image, np.random.default_rng(7))
    c = transform(image, np.random.default_rng(8))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)


def test_adjust_hue_matches_colorsys():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.random((3, 6, 5))).float()
    x[:, 0, 0] = 0.4  # gray pixel: hue undefined, must stay gray
    x[0, 1, 1] = x[1, 1, 1]  # tie between two max channels
    for shift in (0.08, -0.08, 0.5):
        out = adjust_hue(x, shift)
        expected = np.empty((3, 6, 5))
        for i in range(6):
            for j in range(5):
                h, s, v = colorsys.rgb_to_hsv(*x[:, i, j].tolist())
                expected[:, i, j] = colorsys.hsv_to_rgb((h + shift) % 1.0, s, v)
        np.testing.assert_allclose(out.numpy(), expected, atol=1e-5)


def test_color_jitter_keeps_gray_images_gray():
    gray = torch.full((3, 8, 8), 0.5)
    out = color_jitter(gray, np.random.default_rng(0))
    assert torch.allclose(out[0], out[1]) and torch.allclose(out[1], out[2])


def test_rejects_bad_images():
    transform = build_image_transform(32, train=False)
    with pytest.raises(ValueError, match="uint8"):
        transform(np.zeros((32, 32, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        transform(np.zeros((32, 32), dtype=np.uint8))
