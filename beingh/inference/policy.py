"""`BeingHPolicy`: one observation dict in, one unnormalized action chunk out (reference/guide_inference.md).

The observation goes through exactly the code that built training samples: the eval image transform,
the `EmbodimentTransform` of the data config with the checkpoint's metadata, the same `PromptBuilder`
(one `<img>` block per view unless `image_block_layout="single"`) and `pack_samples`. The model encodes the prompt once (prefix KV cache)
and runs only the action expert at each flow step. With RTC on, the committed start of the chunk is
locked to what the robot executes while the chunk is computed (`beingh.inference.rtc`).

Per call only the images and the state change: the token layout of a (number of views, instruction)
pair (ids, positions, index tensors, zero action placeholders) is tokenized, packed and moved to the
device once and reused, so a call costs the image transform, the state transform, two host-to-device
copies, the model and the unnormalization.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from beingh.batch import UNIFIED_DIM, PackedBatch
from beingh.checkpoint_manifest import verify_checkpoint
from beingh.data.embodiment import BaseDataConfig, embodiment_id, get_data_config
from beingh.data.image import ImageTransform, build_image_transform
from beingh.data.metadata import DatasetMetadata, find_metadata_file, load_metadata
from beingh.data.packing import pack_samples
from beingh.data.prompt import PromptBuilder
from beingh.data.sample import RobotSample
from beingh.data.tokenizer import load_tokenizer
from beingh.data.transforms import EmbodimentTransform
from beingh.inference.checks import (
    DEFAULT_MAX_INSTRUCTION_TOKENS,
    check_embodiment_tag,
    check_finite_actions,
    check_instruction_length,
    check_observation_map,
    check_positive,
    check_unified_state,
)
from beingh.inference.cuda_graph import CUDAGraphSampler
from beingh.inference.protocol import ObservationError
from beingh.inference.rtc import RTCPrefix, RTCState, check_steps, rtc_mode, stateless_prefix
from beingh.model.beingh import BeingH

logger = logging.getLogger(__name__)

INSTRUCTION_KEY = "language.instruction"
RTC_KEYS = ("prev_chunk", "inference_delay", "executed_steps")
"""Optional observation keys that steer RTC instead of being model inputs."""
MAX_CACHED_LAYOUTS = 64
"""Device-resident token layouts kept per policy (one per (views, instruction) pair seen)."""


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def inference_views(data_config: BaseDataConfig) -> list[str]:
    """The views the policy reads: all, the first (`use_fixed_view`), or the first `max_view_num`
    (training draws that subset at random; at inference a fixed subset keeps calls reproducible)."""
    if data_config.use_fixed_view or data_config.max_view_num == -1:
        return data_config.select_views()
    return list(data_config.VIDEO_KEYS[: data_config.max_view_num])


@dataclass
class PolicyParts:
    """What a `BeingHPolicy` runs with, loaded from a checkpoint folder by `load_policy_parts`."""

    model: BeingH
    """On the policy's device and dtype, in eval mode, with the inference overrides applied."""
    data_config: BaseDataConfig
    metadata_file: Path
    dataset_metadata: DatasetMetadata
    transform: EmbodimentTransform
    prompt_builder: PromptBuilder
    image_transform: ImageTransform
    video_keys: list[str]
    embodiment_id: int


def resolve_dtype(device: torch.device, dtype: str | torch.dtype | None) -> torch.dtype:
    """The inference dtype: bf16 on CUDA and fp32 elsewhere unless given (a torch dtype or its name)."""
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    resolved = getattr(torch, dtype, None) if isinstance(dtype, str) else dtype
    if resolved not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype!r}")
    return resolved


def load_policy_parts(
    model_path: str | Path,
    data_config_name: str,
    dataset_name: str,
    embodiment_tag: str,
    instruction_template: str,
    *,
    metadata_variant: str | None = None,
    stats_selection_mode: str = "auto",
    device: torch.device,
    dtype: torch.dtype,
    config_overrides: dict[str, Any] | None = None,
    image_block_layout: str = "per_view",
    max_view_num: int = -1,
    use_fixed_view: bool = False,
    model: BeingH | None = None,
) -> PolicyParts:
    """Read a checkpoint folder: metadata and embodiment transforms, model (unless `model` is given, whose
    tokenizer and metadata still come from `model_path`), tokenizer and prompt layout.

    `config_overrides` replaces `BeingHConfig` fields for inference (e.g. `mpg_semantics`, `mpg_lambda`).
    """
    model_path = Path(model_path)
    if not model_path.is_dir():
        raise FileNotFoundError(f"model_path is not a directory: {model_path}")
    verify_checkpoint(model_path, skip_train_state=True)
    data_config = get_data_config(data_config_name)(
        embodiment_tag=embodiment_tag, use_fixed_view=use_fixed_view, max_view_num=max_view_num)
    metadata_file = find_metadata_file(model_path, dataset_name)
    dataset_metadata = load_metadata(metadata_file, dataset_name, metadata_variant, stats_selection_mode)
    trained_config = dataset_metadata.data_config
    if trained_config is not None and trained_config != data_config_name:
        raise ValueError(f"{metadata_file}: these statistics were computed with data config "
                         f"{trained_config!r}, but data_config_name={data_config_name!r}; the model would get "
                         f"different state/action slots than in training. Pass {trained_config!r}.")
    check_embodiment_tag(embodiment_tag, dataset_metadata.embodiment_tag)
    model = model or BeingH.from_pretrained(model_path)
    if config_overrides:
        model.config = model.config.with_overrides(config_overrides)
    config = model.config
    if config.mpg_active and not hasattr(model, "mpg"):
        raise ValueError(f"use_mpg/mpg_lambda enable MPG but {model_path} has no mpg.* weights "
                         "(the checkpoint was trained without MPG)")
    prompt_builder = PromptBuilder(load_tokenizer(model_path), config.tokens_per_image, config.action_chunk_length,
                                   prompt_template=instruction_template, attn_mode=config.attn_mode,
                                   image_block_layout=image_block_layout)
    return PolicyParts(
        model=model.to(device=device, dtype=dtype).eval(),
        data_config=data_config,
        metadata_file=metadata_file,
        dataset_metadata=dataset_metadata,
        transform=EmbodimentTransform(data_config, dataset_metadata),
        prompt_builder=prompt_builder,
        image_transform=build_image_transform(config.force_image_size, train=False),
        video_keys=inference_views(data_config),
        embodiment_id=embodiment_id(embodiment_tag),
    )


class BeingHPolicy:
    """A checkpoint ready to act: preprocessing, prefix-cached flow sampling, unnormalization, RTC.

    `get_action` returns `action.<key>` arrays of shape (chunk, dim) float32 and, when `enable_rtc`,
    `action_unified` (chunk, 200): the normalized unified chunk, which a stateless client sends back
    as `prev_chunk` (shifted by what it executed) together with `inference_delay`.

    Stateful RTC: tell the policy how many actions of the last chunk were executed, counted from the
    chunk's first step (its locked prefix included: those steps ran from the previous chunk while this
    one was computed), via `get_action(obs, executed_steps=k)` or `advance(k)`. The next chunk's first
    d steps are then the last chunk's steps k..k+d-1. The delay d is `rtc_inference_delay` if given,
    else the last inference wall time times `control_hz` (default: the dataset fps in the metadata).
    `reset()` at every new episode. A loop that pauses the robot during inference (a simulator stepped
    synchronously) executes nothing while the chunk is computed: declare `rtc_inference_delay=0` there,
    or lock a few steps on purpose for smoother chunk transitions. Prefix locking needs the checkpoint's
    `use_inference_prefix_overwrite` (or the argument of that name) as well as `enable_rtc`.

    Matching a checkpoint of the original implementation: its config.json loads with
    `mpg_semantics="original"` (its MPG, bugs included); `image_block_layout="single"` additionally
    reproduces the original server's prompt (one `<img>` block around all views, unlike its training).

    `cuda_graph` replays the prefix-cached flow loop from a CUDA graph captured once per prompt layout
    (`beingh.inference.cuda_graph`; on a CPU the same loop runs eagerly).

    `model` (optional) is an already-built `BeingH` to use instead of loading `model_path`'s weights
    (benchmarks with random weights); the tokenizer and metadata still come from `model_path`.

    The checkpoint's files are checked against its `manifest.json` (when it has one) before loading;
    `get_action` refuses an instruction above `max_instruction_tokens` tokens, a state that is not finite
    after normalization, and never returns non-finite actions (`beingh.inference.checks`).
    """

    def __init__(
        self,
        model_path: str | Path,
        data_config_name: str,
        dataset_name: str,
        embodiment_tag: str,
        instruction_template: str,
        metadata_variant: str | None = None,
        stats_selection_mode: str = "auto",
        device: str | None = None,
        num_inference_timesteps: int | None = None,
        enable_rtc: bool = True,
        use_mpg: bool | None = None,
        mpg_lambda: float | None = None,
        rtc_inference_delay: int | None = None,
        control_hz: float | None = None,
        use_prefix_cache: bool = True,
        max_view_num: int = -1,
        use_fixed_view: bool = False,
        compile: bool = False,
        model: BeingH | None = None,
        mpg_semantics: str | None = None,
        mpg_seed: int | None = None,
        use_inference_prefix_overwrite: bool | None = None,
        image_block_layout: str = "per_view",
        dtype: str | torch.dtype | None = None,
        max_instruction_tokens: int = DEFAULT_MAX_INSTRUCTION_TOKENS,
        cuda_graph: bool = False,
    ):
        check_positive("control_hz", control_hz)
        check_positive("max_instruction_tokens", max_instruction_tokens)
        self.max_instruction_tokens = max_instruction_tokens
        self.model_path = Path(model_path)
        self.device = torch.device(device or default_device())
        self.dtype = resolve_dtype(self.device, dtype)
        overrides = {"use_mpg": use_mpg, "mpg_lambda": mpg_lambda, "mpg_semantics": mpg_semantics,
                     "mpg_seed": mpg_seed, "use_inference_prefix_overwrite": use_inference_prefix_overwrite}
        parts = load_policy_parts(
            model_path, data_config_name, dataset_name, embodiment_tag, instruction_template,
            metadata_variant=metadata_variant, stats_selection_mode=stats_selection_mode, device=self.device,
            dtype=self.dtype, config_overrides={k: v for k, v in overrides.items() if v is not None},
            image_block_layout=image_block_layout, max_view_num=max_view_num, use_fixed_view=use_fixed_view,
            model=model,
        )  # fmt: skip
        self.model, self.data_config, self.transform = parts.model, parts.data_config, parts.transform
        self.metadata_file, self.dataset_metadata = parts.metadata_file, parts.dataset_metadata
        self.prompt_builder, self.image_transform = parts.prompt_builder, parts.image_transform
        self.video_keys, self.embodiment_id = parts.video_keys, parts.embodiment_id
        config = self.model.config
        self.num_inference_timesteps = (
            config.num_inference_timesteps if num_inference_timesteps is None else num_inference_timesteps)
        if self.num_inference_timesteps <= 0:
            raise ValueError(f"num_inference_timesteps must be > 0, got {self.num_inference_timesteps}")
        self.chunk_length = config.action_chunk_length
        self.use_prefix_cache = use_prefix_cache
        self._layouts: dict[tuple[int, str], PackedBatch] = {}
        if compile:
            self._compile()
        self.flow_graphs = CUDAGraphSampler(self.model) if cuda_graph else None

        self.enable_rtc = enable_rtc
        self.prefix_locking = enable_rtc and config.use_inference_prefix_overwrite
        self.rtc_inference_delay = rtc_inference_delay
        self.control_hz = self.dataset_metadata.fps if control_hz is None else control_hz
        self.rtc_mode = rtc_mode(config.use_training_time_rtc) if self.prefix_locking else "off"
        self.rtc = self.new_rtc_state()
        self._log_settings()

        self.metadata: dict[str, Any] = {
            "model_path": str(self.model_path),
            "data_config_name": data_config_name,
            "dataset_name": dataset_name,
            "metadata_variant": metadata_variant,
            "embodiment_tag": embodiment_tag,
            "video_keys": self.video_keys,
            "state_keys": list(self.data_config.STATE_KEYS),
            "action_keys": list(self.data_config.ACTION_KEYS),
            "chunk_length": self.chunk_length,
            "num_inference_timesteps": self.num_inference_timesteps,
            "image_size": config.force_image_size,
            "image_block_layout": image_block_layout,
            "mpg_semantics": config.mpg_semantics if config.mpg_active else None,
            "enable_rtc": enable_rtc,
            "rtc_mode": self.rtc_mode,
            "control_hz": self.control_hz,
            "device": str(self.device),
        }

    # ---- construction helpers ----------------------------------------------------------------
    def _log_settings(self) -> None:
        config = self.model.config
        if not self.enable_rtc:
            logger.info("RTC: disabled (enable_rtc=False): chunks are sampled without a locked prefix")
        elif not self.prefix_locking:
            logger.info("RTC: no prefix locking (use_inference_prefix_overwrite=False in %s/config.json); pass "
                        "use_inference_prefix_overwrite=True to lock the committed steps", self.model_path)
        else:
            trained = "with" if config.use_training_time_rtc else "without"
            logger.info("RTC: %s (checkpoint trained %s training-time RTC)", self.rtc_mode, trained)
        if config.mpg_active:
            logger.info("MPG: %s semantics, lambda %g, %d refinement pass(es)", config.mpg_semantics,
                        config.mpg_lambda, config.mpg_refinement_iters)

    def _compile(self) -> None:
        if self.device.type != "cuda":
            raise ValueError("compile=True is for CUDA devices; the CPU path runs eagerly")
        self.model.compile_for_inference()

    # ---- RTC state -----------------------------------------------------------------------------
    def new_rtc_state(self) -> RTCState | None:
        """A fresh chunk history (the server keeps one per connection); None when RTC is off."""
        if not self.enable_rtc:
            return None
        if self.rtc_inference_delay is None and not self.control_hz:
            raise ValueError("RTC needs rtc_inference_delay or control_hz (the metadata has no fps); "
                             "pass one of them or enable_rtc=False")
        return RTCState(self.chunk_length, self.control_hz, self.rtc_inference_delay)

    def reset(self) -> None:
        """Start a new episode: forget the previous chunk."""
        if self.rtc is not None:
            self.rtc.reset()

    def advance(self, steps: int) -> None:
        """Report that `steps` more actions of the last returned chunk were executed."""
        if self.rtc is not None:
            self.rtc.advance(steps)

    # ---- inference -------------------------------------------------------------------------------
    def get_action(
        self,
        observations: dict[str, Any],
        executed_steps: int | None = None,
        *,
        inference_delay: int | None = None,
        rtc_state: RTCState | None = None,
        noise: torch.Tensor | np.ndarray | None = None,
    ) -> dict[str, np.ndarray]:
        """Observation dict -> `{"action.<key>": (T, d) float32, ["action_unified": (T, 200)]}`.

        Observation keys: `video.*` (H, W, 3) uint8 (a leading batch dim of 1 is accepted),
        `state.*`, `language.instruction` (str or [str]); optional `executed_steps`,
        `inference_delay` and `prev_chunk` (see the class docstring). `rtc_state` defaults to the
        policy's own history. `noise` (T, 200) fixes the flow's starting point; (passes, T, 200) fixes
        that of every MPG sampling pass (`BeingH.sample_actions`).
        """
        start = time.perf_counter()
        check_observation_map(observations)
        obs = dict(observations)
        rtc_args = {k: obs.pop(k) for k in RTC_KEYS if k in obs}
        executed_steps = rtc_args.get("executed_steps", executed_steps)
        inference_delay = rtc_args.get("inference_delay", inference_delay)
        state = rtc_state if rtc_state is not None else self.rtc

        batch, raw_state = self.build_batch(obs)
        prefix = self._rtc_prefix(state, rtc_args.get("prev_chunk"), executed_steps, inference_delay)
        chunk = self._sample_chunk(batch, prefix, noise)
        actions = self.transform.unified_to_actions(chunk, raw_state)
        out = {key: np.asarray(value, dtype=np.float32) for key, value in actions.items()}
        check_finite_actions({"action_unified": chunk, **out})
        if state is not None:
            state.record(chunk, time.perf_counter() - start)
        if self.enable_rtc:
            out["action_unified"] = chunk
        return out

    def _rtc_prefix(self, state: RTCState | None, prev_chunk: Any, executed_steps: Any,
                    inference_delay: Any) -> RTCPrefix | None:
        try:
            # Checked even when unused (RTC off, no previous chunk): a malformed value is an error.
            if executed_steps is not None:
                executed_steps = check_steps(_scalar(executed_steps), "executed_steps")
            if inference_delay is not None:
                inference_delay = check_steps(_scalar(inference_delay), "inference_delay")
            if not self.prefix_locking:
                return None
            if prev_chunk is not None:
                if inference_delay is None:
                    raise ValueError("prev_chunk needs inference_delay (control steps)")
                return stateless_prefix(prev_chunk, inference_delay, self.chunk_length)
            if executed_steps is not None:
                state.advance(executed_steps)
            return state.prefix(inference_delay)
        except ValueError as err:
            raise ObservationError(f"RTC inputs: {err}") from err

    def build_batch(self, observations: dict[str, Any]) -> tuple[PackedBatch, dict[str, np.ndarray]]:
        """Observation -> (the model's one-sample pack on the policy's device, the raw state vectors).

        The pack equals `pack_samples([PromptBuilder.tokenize(sample, pixel_values)])` of the training
        pipeline; the raw state is what `unified_to_actions` needs for state-relative actions.
        """
        images = [_image(observations, key) for key in self.video_keys]
        raw_state = {key: _vector(observations, key) for key in self.data_config.STATE_KEYS}
        try:
            with np.errstate(over="ignore"):  # an overflow is refused just below, naming the key
                unified_state = self.transform.state_to_unified(raw_state)
        except (KeyError, ValueError) as err:
            raise ObservationError(f"state: {err}") from err
        check_unified_state(self.transform.state, unified_state)
        layout = self._layout(len(images), _instruction(observations))
        pixel_values = torch.stack([self.image_transform(image) for image in images])
        batch = replace(layout, pixel_values=pixel_values.to(self.device, self.dtype),
                        state=torch.from_numpy(unified_state)[None].to(self.device))
        return batch, raw_state

    def _layout(self, num_views: int, instruction: str) -> PackedBatch:
        """The static part of the pack for this view count and instruction, built once on the device.

        Its images and state are zero placeholders: `build_batch` swaps in each call's values.
        """
        key = (num_views, instruction)
        layout = self._layouts.get(key)
        if layout is None:
            check_instruction_length(self.prompt_builder.tokenizer, instruction, self.max_instruction_tokens)
            if len(self._layouts) >= MAX_CACHED_LAYOUTS:
                self._layouts.pop(next(iter(self._layouts)))
            size = self.model.config.force_image_size
            unified = (self.chunk_length, UNIFIED_DIM)
            sample = RobotSample(
                images=[],
                state=np.zeros(UNIFIED_DIM, dtype=np.float32),
                action=np.zeros(unified, dtype=np.float32),
                action_mask=np.zeros(unified, dtype=bool),
                instruction=instruction,
                embodiment_id=self.embodiment_id,
            )
            placeholder_pixels = torch.zeros(num_views, 3, size, size)
            layout = pack_samples([self.prompt_builder.tokenize(sample, placeholder_pixels)]).to(self.device)
            self._layouts[key] = layout
        return layout

    @torch.inference_mode()
    def _sample_chunk(self, batch: PackedBatch, prefix: RTCPrefix | None,
                      noise: torch.Tensor | np.ndarray | None) -> np.ndarray:
        if noise is not None:  # (T, 200), or (passes, T, 200): one per MPG sampling pass
            noise = torch.as_tensor(np.asarray(noise, dtype=np.float32))
            noise = noise.reshape(-1, 1, self.chunk_length, noise.shape[-1]).squeeze(0).to(self.device)
        prefix_actions, prefix_len = None, 0
        if prefix is not None:
            prefix_actions = torch.from_numpy(prefix.actions)[None].to(self.device)
            prefix_len = prefix.length
        args = dict(num_steps=self.num_inference_timesteps, noise=noise, prefix_actions=prefix_actions,
                    prefix_len=prefix_len)
        if self.flow_graphs is not None and self.use_prefix_cache:
            chunk = self.flow_graphs(batch, **args)
        else:
            chunk = self.model.sample_actions(batch, use_cache=self.use_prefix_cache, **args)
        return chunk[0].float().cpu().numpy()


def _scalar(value: Any) -> Any:
    """A one-element array (as `np.savez` or some clients send step counts) -> its Python value."""
    if isinstance(value, np.ndarray) and value.size == 1:
        return value.reshape(()).item()
    return value


def _image(obs: dict[str, Any], key: str) -> np.ndarray:
    if key not in obs:
        raise ObservationError(f"missing image {key!r}; observation has {sorted(obs)}")
    image = obs[key]
    if not isinstance(image, np.ndarray):
        raise ObservationError(f"{key} must be a numpy uint8 array (H, W, 3), got {type(image).__name__}")
    if image.ndim == 4 and image.shape[0] == 1:
        image = image[0]
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or 0 in image.shape:
        raise ObservationError(f"{key} must be (H, W, 3) uint8, got {image.dtype} {image.shape}")
    return image


def _vector(obs: dict[str, Any], key: str) -> np.ndarray:
    if key not in obs:
        raise ObservationError(f"missing state {key!r}; observation has {sorted(obs)}")
    value = obs[key]
    if isinstance(value, list | tuple | float | int) and not isinstance(value, bool):
        try:
            value = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise ObservationError(f"{key} must be a numeric array: {err}") from err
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "biuf":
        raise ObservationError(f"{key} must be a numeric array, got {type(value).__name__}")
    if value.ndim == 2 and value.shape[0] == 1:
        value = value[0]
    if value.ndim == 0:
        value = value.reshape(1)
    if value.ndim != 1 or not np.all(np.isfinite(value)):
        raise ObservationError(f"{key} must be a finite 1-D vector (or (1, d)), got shape {value.shape}")
    return value.astype(np.float64)


def _instruction(obs: dict[str, Any]) -> str:
    text = obs.get(INSTRUCTION_KEY)
    if isinstance(text, list | tuple) and len(text) == 1:
        text = text[0]
    if not isinstance(text, str) or not text.strip():
        raise ObservationError(f"{INSTRUCTION_KEY} must be a non-empty str (or [str]), got {text!r}")
    return text
