"""ViT image transforms in torch (reference/upstream_data.md §6.2): no torchvision on CPU machines.

Train: a random square crop covering 95-100% of the (centered, maximal) square, resized to S×S
(bicubic, antialiased), colour jitter (brightness .3, contrast .4, saturation .5, hue .08, in random
order), ImageNet normalization. Eval: resize the shorter side to S, center crop, normalize.
Randomness comes from the `rng` passed per call so a sample can be rebuilt bit-for-bit.

Speed (this runs for every view of every training sample in each data worker): geometry runs on uint8,
and the colour jitter, the uint8 -> [0, 1] conversion and the ImageNet normalization are folded into ONE
3x3 matrix + offset applied in a single pass (`color_jitter_affine`, `_to_normalized`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_SCALE = (0.95, 1.0)
BRIGHTNESS, CONTRAST, SATURATION, HUE = 0.3, 0.4, 0.5, 0.08
GRAY_WEIGHTS = np.array([0.299, 0.587, 0.114])
_MEAN = np.array(IMAGENET_MEAN)
_STD = np.array(IMAGENET_STD)
# Per-channel bounds of normalize([0, 1]): the final clamp, applied after the fused normalization.
_NORMALIZED_BOUNDS = tuple(zip((-_MEAN / _STD).tolist(), ((1 - _MEAN) / _STD).tolist(), strict=True))


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


def hue_rotation(shift: float) -> np.ndarray:
    """3x3 RGB matrix that shifts hue by `shift` turns: a rotation by 2π·shift about the grey axis (1,1,1).

    A linear approximation of the HSV hue shift of torchvision's `adjust_hue` (exact HSV costs ~5x the
    whole rest of the transform). In the plane orthogonal to the grey axis the RGB cube projects to the
    HSV hexagon, so the rotation moves hue by `shift` up to the hexagon-vs-circle difference (median
    0.005, 99th percentile 0.018 turns at |shift| = 0.08 on random colours; the usual rotation in YIQ
    space keeps luma but is ~4x further off in hue). It keeps the channel mean and the chroma radius
    where HSV keeps max and min; greys stay fixed. Positive shifts go red -> green -> blue.
    """
    angle = 2.0 * np.pi * shift
    cos, sin = np.cos(angle), np.sin(angle)
    cross = np.array([[0.0, -1.0, 1.0], [1.0, 0.0, -1.0], [-1.0, 1.0, 0.0]]) / np.sqrt(3.0)
    return cos * np.eye(3) + sin * cross + (1.0 - cos) / 3.0 * np.ones((3, 3))


def jitter_affine(brightness: float, contrast: float, saturation: float, hue: float, order: np.ndarray,
                  mean_rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The four ColorJitter adjustments, applied in `order` (0 brightness, 1 contrast, 2 saturation,
    3 hue), as one affine map `x -> matrix @ x + offset` on [0, 1] RGB.

    Brightness scales, saturation blends with the per-pixel grey, contrast blends with the image's mean
    grey (tracked through the previous steps from `mean_rgb`, the input's per-channel mean), hue is
    `hue_rotation`. Like torchvision except that only the final result is clamped to [0, 1], not every
    step: the steps compose into one matrix. Factors (1, 1, 1, 0) give the identity.
    """
    matrix, offset = np.eye(3), np.zeros(3)
    for op in order:
        shift = np.zeros(3)
        if op == 0:
            step = brightness * np.eye(3)
        elif op == 1:
            mean_gray = GRAY_WEIGHTS @ (matrix @ mean_rgb + offset)
            step, shift = contrast * np.eye(3), np.full(3, (1.0 - contrast) * mean_gray)
        elif op == 2:
            step = saturation * np.eye(3) + (1.0 - saturation) * np.outer(np.ones(3), GRAY_WEIGHTS)
        elif op == 3:
            step = hue_rotation(hue)
        else:
            raise ValueError(f"colour jitter op must be in 0..3, got {op}")
        matrix, offset = step @ matrix, step @ offset + shift
    return matrix, offset


def color_jitter_affine(rng: np.random.Generator, mean_rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ColorJitter(0.3, 0.4, 0.5, 0.08): random factors and random order, as `jitter_affine`."""
    brightness = rng.uniform(1 - BRIGHTNESS, 1 + BRIGHTNESS)
    contrast = rng.uniform(1 - CONTRAST, 1 + CONTRAST)
    saturation = rng.uniform(1 - SATURATION, 1 + SATURATION)
    hue = rng.uniform(-HUE, HUE)
    return jitter_affine(brightness, contrast, saturation, hue, rng.permutation(4), mean_rgb)


def _planes(x: torch.Tensor) -> torch.Tensor:
    """(3, H, W) uint8 (any strides) -> (3, H*W) contiguous float32 in 0..255: one copy.

    Channel planes make the colour matmul below a contiguous GEMM (~2x faster than on pixel rows).
    """
    return x.to(torch.float32, memory_format=torch.contiguous_format).view(3, -1)


def _to_normalized(planes: torch.Tensor, size: tuple[int, int], matrix: np.ndarray, offset: np.ndarray,
                   clamp: bool) -> torch.Tensor:
    """normalize(clamp(matrix @ planes / 255 + offset, 0, 1)) as one matmul: (3, H, W) float32.

    The ImageNet normalization is folded into the matrix and offset, so the clamp bounds become the
    per-channel images of 0 and 1.
    """
    scaled = matrix / (255.0 * _STD[:, None])
    shifted = (offset - _MEAN) / _STD
    out = torch.addmm(torch.from_numpy(shifted[:, None]).float(), torch.from_numpy(scaled).float(), planes)
    if clamp:
        for channel, (low, high) in enumerate(_NORMALIZED_BOUNDS):
            out[channel].clamp_(low, high)
    return out.view(3, *size)


def resize_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """(h, w) after torchvision's `Resize(size)`: the shorter side becomes `size`, the longer one
    `int(size * long / short)` (truncated: 480x640 -> 224x298)."""
    short, long = min(height, width), max(height, width)
    new_long = int(size * long / short)
    return (size, new_long) if height <= width else (new_long, size)


def center_crop_offsets(height: int, width: int, size: int) -> tuple[int, int]:
    """(top, left) of torchvision's `center_crop` to size x size: `int(round((side - size) / 2))`, Python's
    round (half to even: an excess of 75 gives 38, 73 gives 36)."""
    if height < size or width < size:
        raise ValueError(f"cannot center-crop {size}x{size} out of {height}x{width}")
    return int(round((height - size) / 2.0)), int(round((width - size) / 2.0))


class ImageTransform:
    """`transform(image (H, W, 3) uint8, rng=None) -> (3, S, S) float32`; `rng` drives train augmentation.

    A class (not a closure) so it pickles into spawned/forkserver DataLoader workers.
    """

    def __init__(self, image_size: int, train: bool):
        if image_size <= 0:
            raise ValueError(f"image_size must be > 0, got {image_size}")
        self.image_size = image_size
        self.train = train

    def __call__(self, image: np.ndarray, rng: np.random.Generator | None = None) -> torch.Tensor:
        x = _as_uint8_chw(image)
        size = (self.image_size, self.image_size)
        if not self.train:
            return _to_normalized(_planes(self._eval_geometry(x)), size, np.eye(3), np.zeros(3), clamp=False)
        rng = rng if rng is not None else np.random.default_rng()
        planes = _planes(self._train_geometry(x, rng))
        matrix, offset = color_jitter_affine(rng, planes.mean(1).double().numpy() / 255.0)
        return _to_normalized(planes, size, matrix, offset, clamp=True)

    def _eval_geometry(self, x: torch.Tensor) -> torch.Tensor:
        """Resize the shorter side to S, then center crop, with torchvision's arithmetic (`resize_shape`,
        `center_crop_offsets`) so the pixels are those of the original's `Resize(S)` + `CenterCrop(S)`."""
        size = self.image_size
        x = _resize(x, resize_shape(*x.shape[-2:], size))
        top, left = center_crop_offsets(*x.shape[-2:], size)
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
