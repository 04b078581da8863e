"""ViT image transforms in torch (reference/upstream_data.md §6.2): no torchvision on CPU machines.

Train: a random square crop covering 95-100% of the (centered, maximal) square, resized to S×S
(bicubic, antialiased), colour jitter (brightness .3, contrast .4, saturation .5, hue .08, in random
order), ImageNet normalization. Eval: resize the shorter side to S, center crop, normalize.
Randomness comes from the `rng` passed per call so a sample can be rebuilt bit-for-bit.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_SCALE = (0.95, 1.0)
BRIGHTNESS, CONTRAST, SATURATION, HUE = 0.3, 0.4, 0.5, 0.08
_GRAY_WEIGHTS = torch.tensor([0.299, 0.587, 0.114])
_HSV_N = torch.tensor([5.0, 3.0, 1.0]).view(3, 1, 1)


def _as_uint8_chw(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 array -> (3, H, W) uint8 view (channels-last strides, no copy)."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {image.dtype} {image.shape}")
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic antialiased resize of a (3, h, w) uint8 image.

    Geometry runs on uint8 (torch's channels-last uint8 kernel is ~4x faster than float32 here); the
    result equals the float resize clamped to [0, 255] and rounded.
    """
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x[None], size=size, mode="bicubic", antialias=True, align_corners=False)[0]


def _to_float(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float32, memory_format=torch.contiguous_format).div_(255.0)


def _grayscale(x: torch.Tensor) -> torch.Tensor:
    return torch.einsum("chw,c->hw", x, _GRAY_WEIGHTS.to(x.dtype))[None]


def _blend_(x: torch.Tensor, other: torch.Tensor | float, factor: float) -> torch.Tensor:
    """In place: factor * x + (1 - factor) * other, clamped to [0, 1]."""
    return x.mul_(factor).add_(other * (1.0 - factor)).clamp_(0, 1)


def adjust_hue(x: torch.Tensor, shift: float) -> torch.Tensor:
    """Rotate the HSV hue of a (3, H, W) [0, 1] image by `shift` turns, keeping saturation and value.

    Branch-free: masks as multipliers and a floor-based modulo (torch.where/remainder/argmax are several
    times slower on CPU), since this runs twice per sample in every data worker.
    """
    r, g, b = x.unbind(0)
    maxc = torch.maximum(torch.maximum(r, g), b)
    delta = maxc - torch.minimum(torch.minimum(r, g), b)
    is_r = (r == maxc).to(x.dtype)
    is_g = (g == maxc).to(x.dtype).mul_(1.0 - is_r)
    is_b = 1.0 - is_r - is_g
    # Hue in sixths of a turn: (g-b)/d on the red sector, 2 + (b-r)/d on green, 4 + (r-g)/d on blue.
    hue6 = (is_r * (g - b)).add_(is_g * (b - r + 2.0 * delta)).add_(is_b * (r - g + 4.0 * delta))
    hue6.div_(delta + (delta == 0).to(x.dtype)).add_(6.0 * shift)
    # HSV -> RGB in closed form: c_n = v - v*s*clamp(min(k, 4-k), 0, 1), k = (n + hue6) mod 6, n = 5, 3, 1.
    k = _HSV_N.to(x.dtype) + hue6[None]
    k.sub_(torch.floor(k * (1.0 / 6.0)).mul_(6.0))
    weight = torch.minimum(k, 4.0 - k).clamp_(0, 1)
    return maxc[None] - weight.mul_(delta[None])


def color_jitter(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """ColorJitter(0.3, 0.4, 0.5, 0.08): the four adjustments in random order with random factors.

    Works in place on `x` (a (3, H, W) [0, 1] tensor the caller owns) where it can.
    """
    brightness = rng.uniform(1 - BRIGHTNESS, 1 + BRIGHTNESS)
    contrast = rng.uniform(1 - CONTRAST, 1 + CONTRAST)
    saturation = rng.uniform(1 - SATURATION, 1 + SATURATION)
    hue = rng.uniform(-HUE, HUE)
    for op in rng.permutation(4):
        if op == 0:
            x = x.mul_(brightness).clamp_(0, 1)
        elif op == 1:
            x = _blend_(x, float(_grayscale(x).mean()), contrast)
        elif op == 2:
            x = _blend_(x, _grayscale(x), saturation)
        else:
            x = adjust_hue(x, hue)
    return x


class ImageTransform:
    """`transform(image (H, W, 3) uint8, rng=None) -> (3, S, S) float32`; `rng` drives train augmentation.

    A class (not a closure) so it pickles into spawned/forkserver DataLoader workers.
    """

    def __init__(self, image_size: int, train: bool):
        if image_size <= 0:
            raise ValueError(f"image_size must be > 0, got {image_size}")
        self.image_size = image_size
        self.train = train
        self.mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def __call__(self, image: np.ndarray, rng: np.random.Generator | None = None) -> torch.Tensor:
        x = _as_uint8_chw(image)
        if self.train:
            rng = rng if rng is not None else np.random.default_rng()
            x = color_jitter(_to_float(self._train_geometry(x, rng)), rng)
        else:
            x = _to_float(self._eval_geometry(x))
        return x.sub_(self.mean).div_(self.std)

    def _eval_geometry(self, x: torch.Tensor) -> torch.Tensor:
        """Resize the shorter side to S, then center crop (nothing at all when already S x S)."""
        size = self.image_size
        h, w = x.shape[-2:]
        if (h, w) == (size, size):
            return x
        scale = size / min(h, w)
        x = _resize(x, (max(size, round(h * scale)), max(size, round(w * scale))))
        top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
        return x[:, top : top + size, left : left + size]

    def _train_geometry(self, x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """Random square crop of 95-100% of the centered maximal square's area, resized to S x S."""
        h, w = x.shape[-2:]
        side = min(h, w)
        crop = max(1, round(side * float(np.sqrt(rng.uniform(*CROP_SCALE)))))
        top = (h - side) // 2 + int(rng.integers(0, side - crop + 1))
        left = (w - side) // 2 + int(rng.integers(0, side - crop + 1))
        return _resize(x[:, top : top + crop, left : left + crop], (self.image_size, self.image_size))


def build_image_transform(image_size: int, train: bool) -> ImageTransform:
    """The ViT transform for training (random crop + colour jitter) or evaluation (deterministic)."""
    return ImageTransform(image_size, train)
