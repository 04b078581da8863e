"""Building the model from local weight folders and loading checkpoints (never touches the network).

- `build_model`: an InternVL3.5 HF folder (original key names `vision_model.*`, `mlp1.*`,
  `language_model.*`) for the ViT, connector and VLM; a Qwen3 folder's config for the expert shape.
- `init_expert`: copies a Qwen3 folder's weights into the `_mot_gen` twins (the original's disabled
  `from_scratch=False` path, reference/upstream_model.md §9.4.11, done right).
- `load_checkpoint`: a Being-H05 checkpoint folder (ours or the release), reporting every missing,
  unexpected or shape-mismatched key and raising unless told otherwise.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from beingh.model.beingh import BeingH
from beingh.model.config import (
    BeingHConfig,
    ExpertConfig,
    expert_config_from_hf,
    llm_config_from_hf,
    vision_config_from_hf,
)
from beingh.model.vision import resize_position_embedding

POSITION_KEY = "vit_model.embeddings.position_embedding"
VOCAB_KEYS = ("language_model.model.embed_tokens.weight", "language_model.lm_head.weight")
RENAMES = (("state_encoder.", "proprio_encoder_robot."),)


@dataclass
class LoadReport:
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    renamed: list[str] = field(default_factory=list)
    resized: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self) -> str:
        parts = [
            f"{name} ({len(items)}): {', '.join(items[:8])}{' ...' if len(items) > 8 else ''}"
            for name, items in vars(self).items()
            if items
        ]
        return "; ".join(parts) or "all keys matched"


def read_safetensors(files: list[Path]) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as f:
                for key in f.keys():
                    if key in state:
                        raise ValueError(f"duplicate tensor {key!r} in {file}")
                    state[key] = f.get_tensor(key)
        except SafetensorError as err:
            raise ValueError(f"{file} is not a readable safetensors file ({err}): it is truncated or "
                             "corrupted; copy it again") from err
    return state


def checkpoint_files(ckpt_dir: Path) -> list[Path]:
    """`model.safetensors`, or the shards named by `model.safetensors.index.json` / `model-*-of-*`."""
    if not ckpt_dir.is_dir():
        raise FileNotFoundError(f"checkpoint folder not found: {ckpt_dir}")
    index = ckpt_dir / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        files = [ckpt_dir / n for n in names]
        absent = [str(f) for f in files if not f.is_file()]
        if absent:
            raise FileNotFoundError(f"{index} names missing shards: {absent}")
        return files
    if (ckpt_dir / "model.safetensors").is_file():
        return [ckpt_dir / "model.safetensors"]
    shards = sorted(ckpt_dir.glob("model-*-of-*.safetensors"))
    if shards:
        return shards
    raise FileNotFoundError(f"no model.safetensors (or model-*-of-*.safetensors shards) in {ckpt_dir}")


def _grow_rows(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    """Append rows equal to the mean of the existing rows (new special tokens start at the average token)."""
    extra = tensor.float().mean(0, keepdim=True).expand(rows - tensor.shape[0], -1).to(tensor.dtype)
    return torch.cat([tensor, extra])


def _fit(
    key: str, value: torch.Tensor, target: torch.Tensor, model: BeingH, report: LoadReport
) -> torch.Tensor | None:
    """Adapt a checkpoint tensor to the model's shape where that is well defined, else record a mismatch."""
    if value.shape == target.shape:
        return value
    if key == POSITION_KEY and value.shape[-1] == target.shape[-1]:
        grid = model.config.force_image_size // model.config.vit.patch_size
        report.resized.append(f"{key} {tuple(value.shape)}->{tuple(target.shape)} (bicubic)")
        return resize_position_embedding(value, grid)
    if key in VOCAB_KEYS and value.shape[1] == target.shape[1] and value.shape[0] < target.shape[0]:
        report.resized.append(f"{key} rows {value.shape[0]}->{target.shape[0]} (new rows = mean)")
        return _grow_rows(value, target.shape[0])
    report.mismatched.append(f"{key} checkpoint {tuple(value.shape)} vs model {tuple(target.shape)}")
    return None


def load_checkpoint(
    model: BeingH, ckpt_dir: str | Path, strict: bool = True, allow_missing: tuple[str, ...] = ()
) -> LoadReport:
    """Load a Being-H05 checkpoint folder into `model` (which may live on the meta device).

    Renames `state_encoder.*` to `proprio_encoder_robot.*`, resizes the ViT position table bicubically and
    grows the vocabulary rows when the model has more tokens. Any other difference is reported and, when
    `strict`, raised (missing keys starting with a prefix in `allow_missing` are tolerated).
    """
    ckpt_dir = Path(ckpt_dir)
    raw = read_safetensors(checkpoint_files(ckpt_dir))
    expected = model.state_dict()
    report = LoadReport()
    prepared: dict[str, torch.Tensor] = {}
    seen: set[str] = set()
    for key, value in raw.items():
        new_key = key
        for old, new in RENAMES:
            if key.startswith(old):
                new_key = new + key[len(old) :]
                report.renamed.append(f"{key}->{new_key}")
        if new_key not in expected:
            report.unexpected.append(new_key)
            continue
        seen.add(new_key)
        fitted = _fit(new_key, value, expected[new_key], model, report)
        if fitted is not None:
            prepared[new_key] = fitted
    report.missing = [k for k in expected if k not in seen and not k.startswith(allow_missing)]
    if strict and not report.clean:
        raise ValueError(f"checkpoint {ckpt_dir} does not match the model: {report.summary()}")
    on_meta = any(p.is_meta for p in model.parameters())
    if on_meta and any(k not in prepared for k in expected):
        raise ValueError(f"model is on the meta device but {ckpt_dir} lacks weights: {report.summary()}")
    if on_meta:
        prepared = {k: v.to(expected[k].dtype) for k, v in prepared.items()}
    model.load_state_dict(prepared, strict=False, assign=on_meta)
    return report


# ---- InternVL3.5 + Qwen3 folders --------------------------------------------------------------------------
def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"config not found: {path}")
    return json.loads(path.read_text())


def config_from_folders(mllm_path: str | Path, expert_path: str | Path | None) -> BeingHConfig:
    """BeingHConfig with the shapes of an InternVL3.5 folder and (optionally) a Qwen3 expert folder."""
    mllm_path = Path(mllm_path)
    raw = _read_json(mllm_path / "config.json")
    for key in ("llm_config", "vision_config"):
        if key not in raw:
            raise ValueError(f"{mllm_path / 'config.json'} lacks '{key}' (expected an InternVL3.5 folder)")
    llm = llm_config_from_hf(raw["llm_config"], where=f"{mllm_path}/config.json:llm_config")
    vit = vision_config_from_hf(raw["vision_config"], where=f"{mllm_path}/config.json:vision_config")
    if expert_path is None:
        expert = ExpertConfig(llm.hidden_size, llm.intermediate_size, llm.num_hidden_layers, llm.rms_norm_eps)
    else:
        expert_file = Path(expert_path) / "config.json"
        expert = expert_config_from_hf(_read_json(expert_file), where=str(expert_file))
    return BeingHConfig(
        llm=llm,
        expert=expert,
        vit=vit,
        downsample_ratio=float(raw.get("downsample_ratio", 0.5)),
        select_layer=int(raw.get("select_layer", -1)),
        force_image_size=int(raw.get("force_image_size") or vit.image_size),
    )


def _mllm_key(key: str) -> str:
    for old, new in (
        ("vision_model.", "vit_model."),
        ("mlp1.", "connector.mlp1."),
        ("language_model.", "language_model."),
    ):
        if key.startswith(old):
            return new + key[len(old) :]
    raise ValueError(
        f"unexpected InternVL weight {key!r} (expected vision_model.*, mlp1.* or language_model.*)"
    )


@torch.no_grad()
def build_model(
    mllm_path: str | Path,
    expert_path: str | Path | None,
    config_overrides: dict | None = None,
    vocab_size: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> BeingH:
    """BeingH with InternVL3.5 weights for the ViT/connector/VLM, a random expert and a Xavier action head.

    The model is allocated once, in `dtype`, and the folder is read one tensor at a time (shard by shard),
    so the peak is the model plus its largest tensor. The ViT position table is resized bicubically to
    `force_image_size`; `vocab_size` larger than the checkpoint's grows the embeddings and `lm_head` with
    mean rows (never shrinks: a tokenizer may be smaller than the padded embedding table).
    """
    mllm_path = Path(mllm_path)
    config = config_from_folders(mllm_path, expert_path).with_overrides(config_overrides or {})
    stored_image_size = config.vit.image_size
    config = replace(config, vit=replace(config.vit, image_size=config.force_image_size))
    with torch.device("meta"):
        model = BeingH(config)
    model.to(dtype).to_empty(device="cpu")
    model.init_weights()
    expected = model.state_dict()
    loaded: set[str] = set()
    for file in sorted(mllm_path.glob("*.safetensors")) or checkpoint_files(mllm_path):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                new_key = _mllm_key(key)
                if new_key not in expected or "_mot_gen" in new_key:
                    raise ValueError(f"{mllm_path}: weight {key!r} has no place in the model (as {new_key!r})")
                if new_key in loaded:
                    raise ValueError(f"duplicate tensor {key!r} in {file}")
                value = f.get_tensor(key)
                if new_key == POSITION_KEY:
                    value = resize_position_embedding(value, config.force_image_size // config.vit.patch_size)
                if value.shape != expected[new_key].shape:
                    raise ValueError(
                        f"{mllm_path}: {key} has shape {tuple(value.shape)}, model expects "
                        f"{tuple(expected[new_key].shape)} (config image_size {stored_image_size}, "
                        f"downsample_ratio {config.downsample_ratio})"
                    )
                expected[new_key].copy_(value)
                loaded.add(new_key)
    lm_head, embed = "language_model.lm_head.weight", "language_model.model.embed_tokens.weight"
    if lm_head not in loaded and embed in loaded:  # tied in the folder
        expected[lm_head].copy_(expected[embed])
        loaded.add(lm_head)
    vlm_prefixes = ("vit_model.", "connector.", "language_model.")
    missing = [k for k in expected if k.startswith(vlm_prefixes) and "_mot_gen" not in k and k not in loaded]
    if missing:
        raise ValueError(f"{mllm_path} lacks weights for {missing[:8]}{' ...' if len(missing) > 8 else ''}")
    if vocab_size is not None and vocab_size > config.llm.vocab_size:
        resize_vocab(model, vocab_size)
    return model


@torch.no_grad()
def resize_vocab(model: BeingH, vocab_size: int) -> None:
    """Grow `embed_tokens` and `lm_head` to `vocab_size` rows; new rows are the mean of the old ones."""
    lm = model.language_model
    old = lm.model.embed_tokens.weight
    if vocab_size < old.shape[0]:
        raise ValueError(f"cannot shrink the vocabulary from {old.shape[0]} to {vocab_size}")
    embed = torch.nn.Embedding(vocab_size, old.shape[1], device=old.device, dtype=old.dtype)
    embed.weight.copy_(_grow_rows(old, vocab_size))
    head = torch.nn.Linear(old.shape[1], vocab_size, bias=False, device=old.device, dtype=old.dtype)
    head.weight.copy_(_grow_rows(lm.lm_head.weight, vocab_size))
    lm.model.embed_tokens, lm.lm_head = embed, head
    model.config = replace(model.config, llm=replace(model.config.llm, vocab_size=vocab_size))


_EXPERT_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_EXPERT_NAMES = {
    "self_attn.q_proj.weight": "self_attn.q_proj_mot_gen.weight",
    "self_attn.k_proj.weight": "self_attn.k_proj_mot_gen.weight",
    "self_attn.v_proj.weight": "self_attn.v_proj_mot_gen.weight",
    "self_attn.o_proj.weight": "self_attn.o_proj_mot_gen.weight",
    "self_attn.q_norm.weight": "self_attn.q_norm_mot_gen.weight",
    "self_attn.k_norm.weight": "self_attn.k_norm_mot_gen.weight",
    "mlp.gate_proj.weight": "mlp_mot_gen.gate_proj.weight",
    "mlp.up_proj.weight": "mlp_mot_gen.up_proj.weight",
    "mlp.down_proj.weight": "mlp_mot_gen.down_proj.weight",
    "input_layernorm.weight": "input_layernorm_mot_gen.weight",
    "post_attention_layernorm.weight": "post_attention_layernorm_mot_gen.weight",
}
_ATTENTION_PARTS = ("self_attn.",)


@dataclass
class ExpertInitReport:
    copied: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    """Attention weights left random because their shape differs from the shared head space."""


@torch.no_grad()
def init_expert(
    model: BeingH, expert_path: str | Path | None, from_scratch: bool = False
) -> ExpertInitReport:
    """Initialise the `_mot_gen` weights: randomly (`from_scratch`) or from a Qwen3 folder.

    From a folder, MLPs, norms and the final norm are copied (their shapes must match the expert config);
    attention projections/QK-norms are copied when their shapes match the shared head space (true for
    Qwen3-0.6B next to Qwen3-1.7B), else left random and listed in `skipped`. Layer counts must match.
    """
    report = ExpertInitReport()
    decoder = model.language_model.model
    if from_scratch:
        for name, param in decoder.named_parameters():
            if "_mot_gen" in name:
                param.normal_(0.0, 0.02) if param.ndim == 2 else param.fill_(1.0)
        return report
    if expert_path is None:
        raise ValueError("init_expert(from_scratch=False) needs expert_path (a Qwen3 folder)")
    folder = Path(expert_path)
    weights = read_safetensors(sorted(folder.glob("*.safetensors")) or checkpoint_files(folder))
    layer_ids = {int(m.group(1)) for k in weights if (m := _EXPERT_LAYER.match(k))}
    if len(layer_ids) != len(decoder.layers):
        raise ValueError(
            f"{folder} has {len(layer_ids)} layers, the model's expert has {len(decoder.layers)}"
        )
    params = dict(decoder.named_parameters())
    targets = {"model.norm.weight": "norm_mot_gen.weight"}
    for key in weights:
        m = _EXPERT_LAYER.match(key)
        if m and m.group(2) in _EXPERT_NAMES:
            targets[key] = f"layers.{m.group(1)}.{_EXPERT_NAMES[m.group(2)]}"
    for key, target in targets.items():
        if key not in weights:
            raise ValueError(f"{folder} lacks {key!r}")
        value, param = weights[key], params[target]
        if value.shape != param.shape:
            if target.split(".", 2)[-1].startswith(_ATTENTION_PARTS):
                report.skipped.append(f"{key} {tuple(value.shape)} vs {tuple(param.shape)}")
                continue
            raise ValueError(
                f"{folder}: {key} has shape {tuple(value.shape)}, expert expects {tuple(param.shape)}"
            )
        param.copy_(value)
        report.copied.append(target)
    return report
