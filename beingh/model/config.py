"""Typed configuration of the Being-H0.5 model, and conversion to/from the original release config.json.

The release format nests the LLM shape under `llm_config` (with the expert under
`llm_config.expert_config`) and the ViT shape under `vit_config`; everything else sits at the top level.
`save_pretrained` writes that layout (plus our extra fields) so the original code and ours read the same
file. Unlike the original, the flow-matching constants are read from the file, not hard-coded
(reference/upstream_model.md §9.4.13).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from beingh.batch import ATTN_MODES, UNIFIED_DIM
from beingh.model.mpg import MPG_SEMANTICS

ATTN_BACKENDS = ("auto", "sdpa", "flex")
BEINGH_MARKER_KEY = "unified_dim"
"""A top-level key every config.json beingh writes carries and the original's never does (the original
hard-codes the 200-dim unified space). A release-layout file without it was written by the original."""


@dataclass
class LLMConfig:
    """Qwen3 decoder shape of the VLM ("und") stream. Its head geometry is shared with the expert."""

    hidden_size: int = 2048
    intermediate_size: int = 6144
    num_hidden_layers: int = 28
    num_attention_heads: int = 16
    num_key_value_heads: int = 8
    head_dim: int = 128
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    vocab_size: int = 151_936
    max_position_embeddings: int = 40_960


@dataclass
class ExpertConfig:
    """Width of the action-expert ("gen") stream; heads and RoPE come from `LLMConfig`."""

    hidden_size: int = 1024
    intermediate_size: int = 3072
    num_hidden_layers: int = 28
    rms_norm_eps: float = 1e-6


@dataclass
class VisionConfig:
    """InternViT shape (InternViT-300M by default). `image_size` is the size its position table is stored at."""

    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    patch_size: int = 14
    image_size: int = 448
    num_channels: int = 3
    layer_norm_eps: float = 1e-6
    qkv_bias: bool = True
    initializer_factor: float = 0.1
    drop_path_rate: float = 0.0


@dataclass
class BeingHConfig:
    llm: LLMConfig = field(default_factory=LLMConfig)
    expert: ExpertConfig = field(default_factory=ExpertConfig)
    vit: VisionConfig = field(default_factory=VisionConfig)
    downsample_ratio: float = 0.5
    select_layer: int = -1
    force_image_size: int = 224
    action_chunk_length: int = 16
    unified_dim: int = UNIFIED_DIM
    # Flow matching (t=0 noise, t=1 data): s ~ Beta(alpha, beta), t = (noise_s - s) / noise_s.
    noise_beta_alpha: float = 1.5
    noise_beta_beta: float = 1.0
    noise_s: float = 0.999
    num_timestep_buckets: int = 1000
    num_inference_timesteps: int = 4
    attn_mode: str = "causal"
    """One of `beingh.batch.ATTN_MODES`, recorded for the prompt builder (training and the policy build
    packs with it); the model reads the mask from the batch's `segment_ids`, so both use the same mask."""
    attn_backend: str = "auto"
    """"sdpa" (dense boolean mask), "flex" (BlockMask; compiled on CUDA) or "auto" (flex on CUDA for long packs)."""
    # Manifold-preserving gating (reference/upstream_model.md §4; `beingh.model.mpg`).
    use_mpg: bool = False
    mpg_lambda: float = 0.0
    mpg_num_projections: int = 32
    mpg_refinement_iters: int = 1
    mpg_gate_temperature: float = 2.0
    mpg_use_stop_gradient: bool = True
    mpg_semantics: str = "fixed"
    """"original" (the original's computation, bugs included: what its checkpoints learned) or "fixed"
    (beingh's, without §9.1's bugs). A config.json written by the original loads as "original"."""
    mpg_seed: int | None = None
    """Seed of the sliced-Wasserstein projections. None: "fixed" uses seed 0, "original" draws new
    projections on every call from torch's RNG (as the original did)."""
    # Real-time chunking.
    use_training_time_rtc: bool = False
    simulated_delay: int = 0
    rtc_delay_exp_weight: bool = True
    use_inference_prefix_overwrite: bool = True
    """Lock the committed start of a chunk at inference (RTC). A config.json written by the original
    loads as True: its policy always set it, whatever the file said."""
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        if self.attn_mode not in ATTN_MODES:
            raise ValueError(f"attn_mode must be one of {ATTN_MODES}, got {self.attn_mode!r}")
        if self.attn_backend not in ATTN_BACKENDS:
            raise ValueError(f"attn_backend must be one of {ATTN_BACKENDS}, got {self.attn_backend!r}")
        if self.llm.num_hidden_layers != self.expert.num_hidden_layers:
            raise ValueError(
                f"the expert must have as many layers as the LLM (MoT pairs them layer by layer): "
                f"llm {self.llm.num_hidden_layers} vs expert {self.expert.num_hidden_layers}"
            )
        if self.llm.num_attention_heads % self.llm.num_key_value_heads:
            raise ValueError("llm.num_attention_heads must be a multiple of llm.num_key_value_heads")
        if self.force_image_size % self.vit.patch_size:
            raise ValueError(
                f"force_image_size {self.force_image_size} is not a multiple of patch {self.vit.patch_size}"
            )
        grid = self.force_image_size // self.vit.patch_size
        if (grid * self.downsample_ratio) % 1:
            raise ValueError(
                f"patch grid {grid} is not divisible by 1/downsample_ratio ({self.downsample_ratio})"
            )
        if self.mpg_semantics not in MPG_SEMANTICS:
            raise ValueError(f"mpg_semantics must be one of {MPG_SEMANTICS}, got {self.mpg_semantics!r}")
        if self.simulated_delay is None:  # the original's "no delay"
            self.simulated_delay = 0
        if self.simulated_delay < 0:
            raise ValueError(f"simulated_delay must be >= 0, got {self.simulated_delay}")

    @property
    def tokens_per_image(self) -> int:
        """Vision tokens per view after the pixel shuffle (64 at 224 px)."""
        grid = self.force_image_size // self.vit.patch_size
        return int(grid * self.downsample_ratio) ** 2

    @property
    def mpg_active(self) -> bool:
        return self.use_mpg and self.mpg_lambda > 0

    # ---- plain dict round trip -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BeingHConfig:
        data = dict(data)
        nested = {"llm": LLMConfig, "expert": ExpertConfig, "vit": VisionConfig}
        kwargs: dict[str, Any] = {}
        for name, sub_cls in nested.items():
            if name in data:
                kwargs[name] = _build(sub_cls, data.pop(name), where=f"config.{name}")
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"config has unknown keys {unknown}")
        kwargs.update(data)
        return cls(**kwargs)

    def with_overrides(self, overrides: dict[str, Any]) -> BeingHConfig:
        """Copy with top-level fields replaced; `llm`/`expert`/`vit` take dicts of their own fields."""
        names = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ValueError(f"unknown BeingHConfig fields {unknown}; known: {sorted(names)}")
        updates: dict[str, Any] = {}
        for key, value in overrides.items():
            current = getattr(self, key)
            if key in ("llm", "expert", "vit") and isinstance(value, dict):
                updates[key] = _build(type(current), {**asdict(current), **value}, where=f"config.{key}")
            else:
                updates[key] = value
        return replace(self, **updates)

    # ---- release format --------------------------------------------------------------------------
    @classmethod
    def from_release_dict(cls, data: dict[str, Any]) -> BeingHConfig:
        """Read the original's `config.json` (nested `llm_config`/`expert_config`/`vit_config`)."""
        for key in ("llm_config", "vit_config"):
            if key not in data:
                raise ValueError(
                    f"release config lacks '{key}' (is this a Being-H05 checkpoint config.json?)"
                )
        llm_raw = data["llm_config"]
        if "expert_config" not in llm_raw:
            raise ValueError(
                "release config lacks 'llm_config.expert_config' (only MoT checkpoints are supported)"
            )
        llm = llm_config_from_hf(llm_raw, where="llm_config")
        expert = expert_config_from_hf(llm_raw["expert_config"], where="llm_config.expert_config")
        vit = vision_config_from_hf(data["vit_config"], where="vit_config")
        top = _known_fields(cls, data, skip={"llm", "expert", "vit"})
        if written_by_original(data):
            top.update(mpg_semantics="original", use_inference_prefix_overwrite=True)
        return cls(llm=llm, expert=expert, vit=vit, **top)

    def to_release_dict(self) -> dict[str, Any]:
        """The release layout, readable by the original code, with all our fields at the top level."""
        llm = self.llm
        expert_config = {
            "architectures": ["Qwen3ForCausalLM"],
            "model_type": "qwen3",
            "hidden_size": self.expert.hidden_size,
            "intermediate_size": self.expert.intermediate_size,
            "num_hidden_layers": self.expert.num_hidden_layers,
            "rms_norm_eps": self.expert.rms_norm_eps,
            "num_attention_heads": llm.num_attention_heads,
            "num_key_value_heads": llm.num_key_value_heads,
            "head_dim": llm.head_dim,
            "rope_theta": llm.rope_theta,
            "hidden_act": "silu",
            "attention_bias": False,
            "vocab_size": llm.vocab_size,
            "tie_word_embeddings": False,
            "layer_module": "Qwen3DecoderLayer",
        }
        llm_config = {
            "architectures": ["Qwen3ForCausalLM"],
            "model_type": "qwen3",
            **asdict(llm),
            "hidden_act": "silu",
            "attention_bias": False,
            "qk_norm": True,
            "tie_word_embeddings": False,
            "layer_module": "Qwen3MoTDecoderLayer",
            "use_mot": True,
            "expert_config": expert_config,
        }
        vit = self.vit
        vit_config = {
            "architectures": ["InternVisionModel"],
            "model_type": "intern_vit_6b",
            **asdict(vit),
            "hidden_act": "gelu",
            "norm_type": "layer_norm",
            "qk_normalization": False,
            "use_flash_attn": False,
            "select_layer": self.select_layer,
            "downsample_ratio": self.downsample_ratio,
        }
        top = {k: v for k, v in asdict(self).items() if k not in ("llm", "expert", "vit")}
        return {
            "model_type": "beingh",
            "connector_arch": "internvl_connector",
            "use_expert": True,
            "use_flow_matching": True,
            "action_token_num": self.action_chunk_length,
            "template": "being_h0",
            **top,
            "llm_config": llm_config,
            "vit_config": vit_config,
        }

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_release_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> BeingHConfig:
        """Read a config.json in either layout (release-style nested, or our plain `to_dict`)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"model config not found: {path}")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON: {err}") from err
        try:
            return cls.from_release_dict(data) if "llm_config" in data else cls.from_dict(data)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: {err}") from err


def written_by_original(data: dict[str, Any]) -> bool:
    """True for a release-layout config.json written by the original implementation (no `unified_dim`).

    Such a checkpoint learned the original's MPG (`mpg_semantics="original"`), and its
    `use_inference_prefix_overwrite` is the unread training default (the original's policy always locked).
    """
    return "llm_config" in data and BEINGH_MARKER_KEY not in data


def llm_config_from_hf(raw: dict[str, Any], where: str) -> LLMConfig:
    """Qwen3 HF config dict -> LLMConfig (head_dim defaults to hidden/heads as in HF)."""
    arch = (raw.get("architectures") or ["Qwen3ForCausalLM"])[0]
    if "Qwen3" not in arch:
        raise ValueError(f"{where}.architectures is {arch!r}; only Qwen3 language models are supported")
    if raw.get("attention_bias"):
        raise ValueError(f"{where}.attention_bias=True is not supported (Qwen3 has no attention bias)")
    rope = raw.get("rope_parameters") or {}
    scaling = raw.get("rope_scaling") or {}
    rope_type = scaling.get("rope_type", scaling.get("type")) or rope.get("rope_type", "default")
    if rope_type != "default":
        raise ValueError(f"{where}: RoPE scaling {rope_type!r} is not supported (plain RoPE only)")
    heads = _require(raw, "num_attention_heads", where)
    return LLMConfig(
        hidden_size=_require(raw, "hidden_size", where),
        intermediate_size=_require(raw, "intermediate_size", where),
        num_hidden_layers=_require(raw, "num_hidden_layers", where),
        num_attention_heads=heads,
        num_key_value_heads=raw.get("num_key_value_heads") or heads,
        head_dim=raw.get("head_dim") or raw["hidden_size"] // heads,
        rope_theta=float(raw.get("rope_theta") or rope.get("rope_theta") or 1_000_000.0),
        rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        vocab_size=_require(raw, "vocab_size", where),
        max_position_embeddings=raw.get("max_position_embeddings", 40_960),
    )


def expert_config_from_hf(raw: dict[str, Any], where: str) -> ExpertConfig:
    """Only the expert's width, FFN, depth and eps are used; its heads/RoPE are the VLM's (upstream §1.4)."""
    act = raw.get("hidden_act", "silu")
    if act != "silu":
        raise ValueError(f"{where}.hidden_act must be 'silu', got {act!r}")
    return ExpertConfig(
        hidden_size=_require(raw, "hidden_size", where),
        intermediate_size=_require(raw, "intermediate_size", where),
        num_hidden_layers=_require(raw, "num_hidden_layers", where),
        rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
    )


def vision_config_from_hf(raw: dict[str, Any], where: str) -> VisionConfig:
    if raw.get("qk_normalization"):
        raise ValueError(f"{where}.qk_normalization=True (InternViT-6B) is not supported; use InternViT-300M")
    if raw.get("norm_type", "layer_norm") != "layer_norm":
        raise ValueError(f"{where}.norm_type must be 'layer_norm', got {raw.get('norm_type')!r}")
    return VisionConfig(
        hidden_size=_require(raw, "hidden_size", where),
        intermediate_size=_require(raw, "intermediate_size", where),
        num_hidden_layers=_require(raw, "num_hidden_layers", where),
        num_attention_heads=_require(raw, "num_attention_heads", where),
        patch_size=raw.get("patch_size", 14),
        image_size=raw.get("image_size", 448),
        num_channels=raw.get("num_channels", 3),
        layer_norm_eps=float(raw.get("layer_norm_eps", 1e-6)),
        qkv_bias=bool(raw.get("qkv_bias", True)),
        initializer_factor=float(raw.get("initializer_factor", 0.1)),
        drop_path_rate=float(raw.get("drop_path_rate", 0.0)),
    )


def _require(raw: dict[str, Any], key: str, where: str) -> Any:
    if raw.get(key) is None:
        raise ValueError(f"{where} lacks required key '{key}'")
    return raw[key]


def _known_fields(cls: type, data: dict[str, Any], skip: set[str]) -> dict[str, Any]:
    """The entries of `data` that are fields of `cls` (release files carry many unrelated HF keys)."""
    names = {f.name for f in fields(cls)} - skip
    return {k: v for k, v in data.items() if k in names}


def _build(sub_cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a mapping, got {type(data).__name__}")
    names = {f.name for f in fields(sub_cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{where} has unknown keys {unknown}; known: {sorted(names)}")
    return sub_cls(**data)
