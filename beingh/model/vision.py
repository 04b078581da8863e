"""InternViT (as in InternVL3.5) with the original parameter names, plus the 0.5x pixel shuffle.

Images have a fixed size (`force_image_size`), so this is plain batched ViT attention; the position table
is resized once at load time (`resize_position_embedding`), not at every forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from beingh.model.config import VisionConfig


class InternVisionEmbeddings(nn.Module):
    def __init__(self, config: VisionConfig, image_size: int):
        super().__init__()
        self.patch_size = config.patch_size
        self.grid = image_size // config.patch_size
        self.class_embedding = nn.Parameter(torch.randn(1, 1, config.hidden_size))
        self.patch_embedding = nn.Conv2d(
            config.num_channels, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size
        )
        self.position_embedding = nn.Parameter(torch.randn(1, self.grid**2 + 1, config.hidden_size))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        n, _, h, w = pixel_values.shape
        if h != w or h // self.patch_size != self.grid:
            raise ValueError(
                f"pixel_values are {h}x{w}, expected {self.grid * self.patch_size}x{self.grid * self.patch_size} "
                "(force_image_size)"
            )
        dtype = self.patch_embedding.weight.dtype
        patches = self.patch_embedding(pixel_values.to(dtype)).flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(patches.dtype).expand(n, -1, -1)
        return torch.cat([cls, patches], dim=1) + self.position_embedding.to(patches.dtype)


def resize_position_embedding(table: torch.Tensor, grid: int) -> torch.Tensor:
    """Bicubically resize a (1, 1 + g*g, D) InternViT position table to a `grid` x `grid` one (CLS kept)."""
    old = round((table.shape[1] - 1) ** 0.5)
    if old * old != table.shape[1] - 1:
        raise ValueError(f"position table with {table.shape[1] - 1} patch rows is not a square grid")
    if old == grid:
        return table
    cls, patches = table[:, :1], table[:, 1:]
    patches = patches.float().reshape(1, old, old, -1).permute(0, 3, 1, 2)
    patches = F.interpolate(patches, size=(grid, grid), mode="bicubic", align_corners=False)
    patches = patches.permute(0, 2, 3, 1).reshape(1, grid * grid, -1).to(table.dtype)
    return torch.cat([cls, patches], dim=1)


class InternAttention(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=config.qkv_bias)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class InternMLP(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth: drop the whole residual branch per image with probability `rate`."""
    if rate == 0.0 or not training:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1.0 - rate)
    return x * keep / (1.0 - rate)


class InternVisionEncoderLayer(nn.Module):
    def __init__(self, config: VisionConfig, drop_path_rate: float):
        super().__init__()
        self.drop_path_rate = drop_path_rate
        self.attn = InternAttention(config)
        self.mlp = InternMLP(config)
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.ls1 = nn.Parameter(config.initializer_factor * torch.ones(config.hidden_size))
        self.ls2 = nn.Parameter(config.initializer_factor * torch.ones(config.hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + drop_path(self.attn(self.norm1(x)) * self.ls1, self.drop_path_rate, self.training)
        return x + drop_path(self.mlp(self.norm2(x)) * self.ls2, self.drop_path_rate, self.training)


class InternVisionEncoder(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        n = config.num_hidden_layers
        rates = [config.drop_path_rate * i / max(n - 1, 1) for i in range(n)]
        self.layers = nn.ModuleList(InternVisionEncoderLayer(config, rate) for rate in rates)
        self.gradient_checkpointing = False

    def forward(self, x: torch.Tensor, num_layers: int) -> torch.Tensor:
        for layer in self.layers[:num_layers]:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(layer, x, use_reentrant=False)
            else:
                x = layer(x)
        return x


class InternVisionModel(nn.Module):
    """Returns the hidden state after `select_layer` (-1 = last layer, as InternVL's `extract_feature`)."""

    def __init__(self, config: VisionConfig, image_size: int, select_layer: int = -1):
        super().__init__()
        n = config.num_hidden_layers
        num_layers = n + 1 + select_layer if select_layer < 0 else select_layer
        if not 0 < num_layers <= n:
            raise ValueError(f"select_layer {select_layer} is out of range for a {n}-layer ViT")
        self.num_layers = num_layers
        self.embeddings = InternVisionEmbeddings(config, image_size)
        self.encoder = InternVisionEncoder(config)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.embeddings(pixel_values), self.num_layers)


def pixel_shuffle(x: torch.Tensor, scale: float) -> torch.Tensor:
    """InternVL "v2" pixel shuffle: (N, W, H, C) -> (N, H*s, W*s, C/s^2), folding space into channels."""
    n, w, h, c = x.shape
    x = x.reshape(n, w, int(h * scale), int(c / scale)).permute(0, 2, 1, 3)
    x = x.reshape(n, int(h * scale), int(w * scale), int(c / (scale * scale)))
    return x.permute(0, 2, 1, 3).contiguous()


class InternVLConnector(nn.Module):
    """`mlp1`: LayerNorm(4d) -> Linear -> GELU -> Linear, mapping shuffled ViT features to the LLM width."""

    def __init__(self, vit_hidden: int, llm_hidden: int, downsample_ratio: float):
        super().__init__()
        width = vit_hidden * int(1 / downsample_ratio) ** 2
        self.mlp1 = nn.Sequential(
            nn.LayerNorm(width), nn.Linear(width, llm_hidden), nn.GELU(), nn.Linear(llm_hidden, llm_hidden)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp1(x)


def image_tokens(
    vit: InternVisionModel, connector: InternVLConnector, pixel_values: torch.Tensor, downsample_ratio: float
) -> torch.Tensor:
    """(N_img, 3, S, S) images -> (N_img * tokens_per_image, llm_hidden) tokens, image after image."""
    features = vit(pixel_values)[:, 1:]
    n, p, c = features.shape
    side = round(p**0.5)
    shuffled = pixel_shuffle(features.reshape(n, side, side, c), downsample_ratio)
    return connector(shuffled.reshape(n, -1, shuffled.shape[-1])).reshape(-1, connector.mlp1[1].out_features)
