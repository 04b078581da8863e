"""Training arguments: one typed dataclass per group of reference/TRAINING_GUIDE.md, same names and defaults.

The data and sequence groups are the loader's own dataclasses (`beingh.data.pipeline`), so the loader
and the command line cannot drift apart. The dataclasses are the single source of truth: `build_parser` derives the argparse groups (with help
text) from their fields, and `parse_args` turns a command line back into a validated `TrainArgs`.
Booleans accept the guide's `--x True/False` as well as a bare `--x`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

from beingh.batch import ATTN_MODES
from beingh.data.pipeline import DataArgs, SequenceArgs
from beingh.model.loading import checkpoint_files
from beingh.model.mpg import MPG_SEMANTICS
from beingh.train.loss import LOSS_NORMALIZATIONS


class ArgumentError(ValueError):
    """A training argument is missing, malformed or contradicts another one."""


def _help(text: str, **extra: Any) -> dict[str, Any]:
    return {"help": text, **extra}


@dataclass
class PathArgs:
    """Where the model, the data and the outputs live."""

    dataset_config_file: str = field(metadata=_help("YAML file specifying datasets", required=True))
    output_dir: str = field(metadata=_help("Output directory for checkpoints", required=True))
    mllm_path: str = field(default="", metadata=_help("Path to InternVL backbone (e.g., `InternVL3_5-2B`)"))
    expert_path: str = field(default="", metadata=_help("Path to Qwen expert model (e.g., `Qwen3-0.6B`)"))
    resume_from: str = field(
        default="",
        metadata=_help("Path to Being-H checkpoint to resume from (a released checkpoint or one of ours)"),
    )
    logging_dir: str = field(
        default="", metadata=_help("TensorBoard directory (default: <output_dir>/tensorboard)")
    )


@dataclass
class TrainingArgs:
    """Optimisation, schedule, checkpointing and logging."""

    max_steps: int = field(metadata=_help("Total training steps (optimizer steps)", required=True))
    learning_rate: float = field(default=1e-4, metadata=_help("Learning rate"))
    weight_decay: float = field(default=1e-5, metadata=_help("Weight decay (matrices only)"))
    warmup_ratio: float = field(default=0.05, metadata=_help("Warmup ratio"))
    lr_scheduler: str = field(
        default="cosine",
        metadata=_help("LR schedule (`cosine` or `constant`)", choices=("cosine", "constant")),
    )
    min_lr: float = field(default=1e-7, metadata=_help("Final learning rate of the cosine schedule"))
    save_steps: int = field(
        default=10000, metadata=_help("Checkpoint save interval (the last step is always saved)")
    )
    save_steps_start: int = field(
        default=25000, metadata=_help("Start saving after this step (first interval save at a step >= this)")
    )
    logging_steps: int = field(default=10, metadata=_help("Logging interval"))
    gradient_accumulation_steps: int = field(default=1, metadata=_help("Gradient accumulation"))
    max_grad_norm: float = field(default=1.0, metadata=_help("Gradient clipping norm (<= 0 disables)"))
    beta1: float = field(default=0.9, metadata=_help("AdamW beta1"))
    beta2: float = field(default=0.999, metadata=_help("AdamW beta2"))
    eps: float = field(default=1e-8, metadata=_help("AdamW epsilon"))
    seed: int = field(default=42, metadata=_help("Random seed (each rank derives its own noise stream)"))
    save_model_only: bool = field(
        default=False, metadata=_help("Save weights only (no optimizer/scheduler/data/RNG state)")
    )
    save_merged_metadata: bool = field(
        default=False,
        metadata=_help(
            "Write hierarchical <group>_metadata.json (merged, per-task and per-embodiment statistics); "
            "False writes only the statistics training normalized with, which requires every dataset of "
            "a group to share them (cross-embodiment groups need True)"
        ),
    )
    keep_last_n_checkpoints: int = field(
        default=0, metadata=_help("Delete older step checkpoints, keeping this many (0 = keep all)")
    )
    loss_normalization: str = field(
        default="pack",
        metadata=_help(
            "`pack`: each pack's loss is the mean over its valid action elements, packs averaged (the "
            "original's); `global`: squared errors summed over the step's micro-batches and ranks, divided "
            "by their total number of valid action elements (torchtitan's; every element weighs the same)",
            choices=LOSS_NORMALIZATIONS,
        ),
    )
    max_consecutive_nonfinite_steps: int = field(
        default=5,
        metadata=_help(
            "A step whose loss or gradient norm is NaN/inf is skipped (no update); stop the run after this "
            "many consecutive skipped steps"
        ),
    )


@dataclass
class ModelArgs:
    """Model construction."""

    use_flow_matching: bool = field(default=True, metadata=_help("Enable flow matching"))
    use_expert: bool = field(default=True, metadata=_help("Use Qwen expert module"))
    layer_module: str = field(default="Qwen3MoTDecoderLayer", metadata=_help("Decoder layer class"))
    conv_style: str = field(default="being_h0", metadata=_help("Prompt template style"))
    action_chunk_length: int = field(default=16, metadata=_help("Actions per chunk"))
    resume_model_only: bool = field(
        default=False,
        metadata=_help("Only load model weights from --resume_from (else also step, optimizer, data, RNG)"),
    )
    num_inference_timesteps: int = field(
        default=4, metadata=_help("Euler steps at inference (saved in config)")
    )
    grad_checkpoint: bool = field(
        default=False, metadata=_help("Activation checkpointing of every ViT block and decoder layer")
    )


@dataclass
class FreezeArgs:
    """Which parts of the model do not train."""

    freeze_mllm: bool = field(
        default=False,
        metadata=_help("Freeze entire VLM backbone (ViT, connector, LLM; the action expert still trains)"),
    )
    freeze_llm: bool = field(
        default=False, metadata=_help("Freeze language model only (not the action expert `_mot_gen` weights)")
    )
    freeze_vit: bool = field(default=False, metadata=_help("Freeze ViT vision encoder"))
    freeze_vit_mlp: bool = field(default=False, metadata=_help("Freeze ViT MLP layers only (the connector)"))


@dataclass
class MPGArgs:
    """Manifold-preserving gating."""

    use_mpg: bool = field(default=True, metadata=_help("Enable MPG enhancement"))
    mpg_lambda: float = field(default=0.1, metadata=_help("MPG residual strength"))
    mpg_num_projections: int = field(default=32, metadata=_help("Sliced Wasserstein projections"))
    mpg_refinement_iters: int = field(default=1, metadata=_help("Inference refinement iterations"))
    mpg_gate_temperature: float = field(default=1.0, metadata=_help("Gate temperature"))
    mpg_use_stop_gradient: bool = field(default=True, metadata=_help("Stop gradient on gate"))
    mpg_semantics: str | None = field(
        default=None,
        metadata=_help(
            "MPG computation: `original` (the original's, what its released checkpoints learned) or "
            "`fixed` (beingh's, without the original's bugs). Default: the --resume_from checkpoint's "
            "(`original` for one written by the original), else `fixed`",
            choices=MPG_SEMANTICS,
        ),
    )


@dataclass
class RTCArgs:
    """Real-time chunking."""

    use_training_time_rtc: bool = field(default=False, metadata=_help("Enable Training-Time RTC"))
    simulated_delay: int = field(default=0, metadata=_help("Max simulated delay steps"))
    rtc_delay_exp_weight: bool = field(default=True, metadata=_help("Exponential delay weighting"))
    use_inference_prefix_overwrite: bool = field(default=True, metadata=_help("Enable prefix locking"))


GROUPS: dict[str, type] = {
    "paths": PathArgs,
    "training": TrainingArgs,
    "model": ModelArgs,
    "data": DataArgs,
    "sequence": SequenceArgs,
    "freeze": FreezeArgs,
    "mpg": MPGArgs,
    "rtc": RTCArgs,
}
GROUP_TITLES = {
    "paths": "Required / paths",
    "training": "Training",
    "model": "Model",
    "data": "Data",
    "sequence": "Sequence",
    "freeze": "Freeze",
    "mpg": "MPG",
    "rtc": "RTC",
}


@dataclass
class TrainArgs:
    """Every training argument, grouped as in the training guide."""

    paths: PathArgs
    training: TrainingArgs
    model: ModelArgs = field(default_factory=ModelArgs)
    data: DataArgs = field(default_factory=DataArgs)
    sequence: SequenceArgs = field(default_factory=SequenceArgs)
    freeze: FreezeArgs = field(default_factory=FreezeArgs)
    mpg: MPGArgs = field(default_factory=MPGArgs)
    rtc: RTCArgs = field(default_factory=RTCArgs)

    @property
    def output_dir(self) -> Path:
        return Path(self.paths.output_dir)

    @property
    def logging_dir(self) -> Path:
        return Path(self.paths.logging_dir) if self.paths.logging_dir else self.output_dir / "tensorboard"

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)


def str2bool(text: str | bool) -> bool:
    """Parse the guide's `True/False` spelling (also yes/no, 1/0)."""
    if isinstance(text, bool):
        return text
    lowered = text.strip().lower()
    if lowered in ("true", "yes", "1", "on"):
        return True
    if lowered in ("false", "no", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {text!r}")


def _scalar_type(annotation: Any) -> type:
    if get_origin(annotation) in (Union, types.UnionType):
        (inner,) = [a for a in get_args(annotation) if a is not type(None)]
        return inner
    return annotation


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except for required arguments and empty-string defaults (their help says it)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.required:
            return f"{action.help} (required)"
        if action.default in ("", None):
            return action.help or ""
        return super()._get_help_string(action)


def build_parser(prog: str = "beingh train") -> argparse.ArgumentParser:
    """An argparse parser with one argument group per dataclass, help text from the field metadata."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Train a Being-H0.5-style VLA policy (run under torchrun for several processes).",
        formatter_class=_HelpFormatter,
        allow_abbrev=False,
    )
    for name, cls in GROUPS.items():
        group = parser.add_argument_group(GROUP_TITLES[name], cls.__doc__)
        hints = get_type_hints(cls)
        for f in dataclasses.fields(cls):
            kind = _scalar_type(hints[f.name])
            required = bool(f.metadata.get("required", False))
            kwargs: dict[str, Any] = {"dest": f"{name}.{f.name}", "help": f.metadata["help"]}
            if required:
                kwargs["required"] = True
            else:
                kwargs["default"] = f.default
            if kind is bool:
                kwargs.update(type=str2bool, nargs="?", const=True, metavar="True|False")
            else:
                kwargs.update(type=kind, metavar=f.name.upper())
            if "choices" in f.metadata:
                kwargs.update(
                    choices=f.metadata["choices"], metavar="{" + ",".join(f.metadata["choices"]) + "}"
                )
            group.add_argument(f"--{f.name}", **kwargs)
    return parser


def parse_args(argv: list[str] | None = None) -> TrainArgs:
    """Parse and validate a command line. Unknown arguments make argparse exit with a usage error."""
    namespace = vars(build_parser().parse_args(argv))
    grouped: dict[str, dict[str, Any]] = {name: {} for name in GROUPS}
    for key, value in namespace.items():
        group, name = key.split(".", 1)
        grouped[group][name] = value
    args = TrainArgs(**{name: GROUPS[name](**values) for name, values in grouped.items()})
    validate(args)
    return args


def _check_dir(path: str, argument: str, must_contain: str | None = None) -> None:
    p = Path(path)
    if not p.is_dir():
        raise ArgumentError(f"--{argument}: folder not found: {p}")
    if must_contain is not None and not (p / must_contain).is_file():
        raise ArgumentError(f"--{argument}: {p} has no {must_contain}")


def validate(args: TrainArgs) -> None:
    """Reject contradictions and missing files before any heavy work starts (one check per group)."""
    for check in (
        _check_paths,
        _check_training,
        _check_model,
        _check_data,
        _check_sequence,
        _check_mpg,
        _check_rtc,
    ):
        check(args)


def _require_positive(values: dict[str, float]) -> None:
    for name, value in values.items():
        if value <= 0:
            raise ArgumentError(f"--{name} must be > 0, got {value}")


def _require_nonnegative(values: dict[str, float]) -> None:
    for name, value in values.items():
        if value < 0:
            raise ArgumentError(f"--{name} must be >= 0, got {value}")


def _check_paths(args: TrainArgs) -> None:
    """A model source, existing folders and files, a tokenizer, and a resume mode the checkpoint allows."""
    p, m = args.paths, args.model
    if not p.mllm_path and not p.resume_from:
        raise ArgumentError("give --mllm_path (with --expert_path) to build a model, or --resume_from")
    if p.mllm_path:
        _check_dir(p.mllm_path, "mllm_path", "config.json")
        if not p.expert_path:
            raise ArgumentError(
                "--mllm_path needs --expert_path (the Qwen3 folder whose config shapes the expert)"
            )
    if p.expert_path:
        _check_dir(p.expert_path, "expert_path", "config.json")
    if p.resume_from:
        _check_dir(p.resume_from, "resume_from", "config.json")
        try:
            checkpoint_files(Path(p.resume_from))
        except FileNotFoundError as err:
            raise ArgumentError(f"--resume_from: {err}") from err
    tokenizer_folder(p)
    if m.resume_model_only and not p.resume_from:
        raise ArgumentError(
            "--resume_model_only True needs --resume_from (the checkpoint to take weights from)"
        )
    if not m.resume_model_only and p.resume_from and not is_full_state_checkpoint(Path(p.resume_from)):
        # A released checkpoint has weights only; a full resume from it is a user error, not a silent restart.
        raise ArgumentError(
            f"--resume_from {p.resume_from} has no training state (train_state/); "
            "pass --resume_model_only True to start a new run from its weights"
        )
    if not Path(p.dataset_config_file).is_file():
        raise ArgumentError(f"--dataset_config_file: file not found: {p.dataset_config_file}")


def _check_training(args: TrainArgs) -> None:
    t = args.training
    _require_positive(
        {
            "max_steps": t.max_steps,
            "save_steps": t.save_steps,
            "logging_steps": t.logging_steps,
            "gradient_accumulation_steps": t.gradient_accumulation_steps,
            "eps": t.eps,
            "max_consecutive_nonfinite_steps": t.max_consecutive_nonfinite_steps,
        }
    )
    _require_nonnegative(
        {
            "save_steps_start": t.save_steps_start,
            "keep_last_n_checkpoints": t.keep_last_n_checkpoints,
            "learning_rate": t.learning_rate,
            "weight_decay": t.weight_decay,
            "min_lr": t.min_lr,
        }
    )
    for name in ("beta1", "beta2"):
        if not 0.0 <= getattr(t, name) < 1.0:
            raise ArgumentError(f"--{name} must be in [0, 1), got {getattr(t, name)}")
    if not 0.0 <= t.warmup_ratio < 1.0:
        raise ArgumentError(f"--warmup_ratio must be in [0, 1), got {t.warmup_ratio}")
    if t.min_lr > t.learning_rate:
        raise ArgumentError(f"--min_lr ({t.min_lr}) is larger than --learning_rate ({t.learning_rate})")
    if t.loss_normalization not in LOSS_NORMALIZATIONS:
        raise ArgumentError(
            f"--loss_normalization must be one of {LOSS_NORMALIZATIONS}, got {t.loss_normalization!r}"
        )


def _check_model(args: TrainArgs) -> None:
    m = args.model
    _require_positive(
        {"action_chunk_length": m.action_chunk_length, "num_inference_timesteps": m.num_inference_timesteps}
    )
    if not m.use_flow_matching:
        raise ArgumentError("--use_flow_matching False is not supported: the action head is flow matching")
    if not m.use_expert:
        raise ArgumentError("--use_expert False is not supported: actions are produced by the MoT expert")
    if m.layer_module != "Qwen3MoTDecoderLayer":
        raise ArgumentError(f"--layer_module must be Qwen3MoTDecoderLayer, got {m.layer_module!r}")
    if m.conv_style != "being_h0":
        raise ArgumentError(f"--conv_style must be being_h0, got {m.conv_style!r}")


def _check_data(args: TrainArgs) -> None:
    d = args.data
    _require_positive({"force_image_size": d.force_image_size, "down_sample_ratio": d.down_sample_ratio})
    _require_nonnegative({"num_workers": d.num_workers, "max_bad_samples": d.max_bad_samples})
    for name in ("vit_dropout_prob", "state_dropout_prob"):
        value = getattr(d, name)
        if not 0.0 <= value < 1.0:
            raise ArgumentError(f"--{name} must be in [0, 1), got {value}")
    if d.num_workers > 0 and d.prefetch_factor <= 0:
        raise ArgumentError(f"--prefetch_factor must be > 0 with workers, got {d.prefetch_factor}")
    _check_down_sample_ratio(args)


def _check_down_sample_ratio(args: TrainArgs) -> None:
    """--down_sample_ratio must equal the ratio of the folder the ViT/connector weights come from: it sets
    the pixel shuffle, hence the connector's input width and the image tokens per view."""
    source = args.paths.resume_from or args.paths.mllm_path
    config_file = Path(source) / "config.json"
    try:
        stored = json.loads(config_file.read_text()).get("downsample_ratio")
    except (OSError, json.JSONDecodeError) as err:
        raise ArgumentError(f"cannot read {config_file}: {err}") from err
    if stored is not None and float(stored) != args.data.down_sample_ratio:
        raise ArgumentError(
            f"--down_sample_ratio {args.data.down_sample_ratio} does not match downsample_ratio {stored} of "
            f"{config_file}: the pixel-shuffle ratio fixes the connector's input width of those weights; "
            f"pass --down_sample_ratio {stored}"
        )


def _check_sequence(args: TrainArgs) -> None:
    s = args.sequence
    _require_positive(
        {
            "max_num_tokens": s.max_num_tokens,
            "expected_num_tokens": s.expected_num_tokens,
            "max_num_tokens_per_sample": s.max_num_tokens_per_sample,
            "max_buffer_size": s.max_buffer_size,
            "prefer_buffer_before": s.prefer_buffer_before,
        }
    )
    if s.expected_num_tokens > s.max_num_tokens:
        raise ArgumentError(
            f"--expected_num_tokens ({s.expected_num_tokens}) exceeds --max_num_tokens ({s.max_num_tokens})"
        )
    if s.max_num_tokens_per_sample > s.max_num_tokens:
        raise ArgumentError(
            f"--max_num_tokens_per_sample ({s.max_num_tokens_per_sample}) exceeds --max_num_tokens "
            f"({s.max_num_tokens})"
        )
    if s.attn_mode not in ATTN_MODES:
        raise ArgumentError(f"--attn_mode must be one of {ATTN_MODES}, got {s.attn_mode!r}")
    if s.prefer_buffer_before > s.expected_num_tokens:
        raise ArgumentError(
            f"--prefer_buffer_before ({s.prefer_buffer_before}) exceeds --expected_num_tokens "
            f"({s.expected_num_tokens})"
        )


def _check_mpg(args: TrainArgs) -> None:
    mpg = args.mpg
    _require_positive(
        {"mpg_num_projections": mpg.mpg_num_projections, "mpg_gate_temperature": mpg.mpg_gate_temperature}
    )
    _require_nonnegative({"mpg_lambda": mpg.mpg_lambda, "mpg_refinement_iters": mpg.mpg_refinement_iters})
    if mpg.mpg_semantics is not None and mpg.mpg_semantics not in MPG_SEMANTICS:
        raise ArgumentError(f"--mpg_semantics must be one of {MPG_SEMANTICS}, got {mpg.mpg_semantics!r}")


def _check_rtc(args: TrainArgs) -> None:
    rtc = args.rtc
    _require_nonnegative({"simulated_delay": rtc.simulated_delay})
    if rtc.use_training_time_rtc and rtc.simulated_delay < 1:
        raise ArgumentError("--use_training_time_rtc True needs --simulated_delay >= 1")
    if rtc.simulated_delay >= args.model.action_chunk_length:
        raise ArgumentError(
            f"--simulated_delay ({rtc.simulated_delay}) must be < --action_chunk_length "
            f"({args.model.action_chunk_length})"
        )


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


def tokenizer_folder(paths: PathArgs) -> Path:
    """Our checkpoints carry the tokenizer; otherwise it comes from the InternVL folder."""
    candidates = [p for p in (paths.resume_from, paths.mllm_path) if p]
    for folder in map(Path, candidates):
        if any((folder / name).is_file() for name in TOKENIZER_FILES):
            return folder
    raise ArgumentError(
        f"no tokenizer files ({', '.join(TOKENIZER_FILES)}) in {' or '.join(candidates)}; "
        "pass --mllm_path with the InternVL folder that holds the tokenizer"
    )


def is_full_state_checkpoint(path: Path) -> bool:
    """True when a checkpoint folder holds the training state a full resume needs."""
    return (path / "train_state" / "trainer_state.json").is_file()
