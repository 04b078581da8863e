"""Build what a run trains: the model and tokenizer (from --resume_from or --mllm_path/--expert_path)
and this rank's data stream (from --dataset_config_file)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

from beingh.batch import PackedBatch
from beingh.data.tokenizer import load_tokenizer
from beingh.train.args import ArgumentError, TrainArgs, tokenizer_folder
from beingh.train.distributed import DistInfo, apply_fsdp, barrier, broadcast_buffers, broadcast_object
from beingh.train.freeze import FreezeReport, apply_freeze
from beingh.train.metrics import LOG


class PackSource(Protocol):
    """This rank's stream of packs, resumable."""

    def __iter__(self) -> Iterator[PackedBatch]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class TrainData:
    """What the data side hands the trainer."""

    packs: PackSource
    write_metadata: Callable[[Path], None]
    """Writes `<folder>/<group>_metadata.json` for every YAML group (the folder is `experiment_cfg`)."""


DataFactory = Callable[[TrainArgs, Any, DistInfo], TrainData]
"""(args, tokenizer, dist info) -> TrainData."""


def model_overrides(args: TrainArgs) -> dict[str, Any]:
    """The BeingHConfig fields a run sets from its arguments (architecture comes from the checkpoint).

    `mpg_semantics` is set only when --mpg_semantics is given; otherwise a --resume_from checkpoint keeps
    its own (`original` when the original wrote it) and a new model gets the config default (`fixed`).
    """
    d, m, mpg, rtc = args.data, args.model, args.mpg, args.rtc
    chosen = {"mpg_semantics": mpg.mpg_semantics} if mpg.mpg_semantics is not None else {}
    return {
        **chosen,
        "force_image_size": d.force_image_size,
        "downsample_ratio": d.down_sample_ratio,
        "action_chunk_length": m.action_chunk_length,
        "num_inference_timesteps": m.num_inference_timesteps,
        "attn_mode": args.sequence.attn_mode,
        "gradient_checkpointing": m.grad_checkpoint,
        "use_mpg": mpg.use_mpg,
        "mpg_lambda": mpg.mpg_lambda,
        "mpg_num_projections": mpg.mpg_num_projections,
        "mpg_refinement_iters": mpg.mpg_refinement_iters,
        "mpg_gate_temperature": mpg.mpg_gate_temperature,
        "mpg_use_stop_gradient": mpg.mpg_use_stop_gradient,
        "use_training_time_rtc": rtc.use_training_time_rtc,
        "simulated_delay": rtc.simulated_delay,
        "rtc_delay_exp_weight": rtc.rtc_delay_exp_weight,
        "use_inference_prefix_overwrite": rtc.use_inference_prefix_overwrite,
    }


def load_train_tokenizer(args: TrainArgs) -> Any:
    """The tokenizer with the being_h0 special tokens added."""
    return load_tokenizer(tokenizer_folder(args.paths))


def build_sharded_model(args: TrainArgs, tokenizer: Any, info: DistInfo) -> tuple[Any, FreezeReport]:
    """The frozen-as-asked, FSDP2-sharded model on this rank's device.

    Only rank 0 reads weights (one CPU copy per job instead of one per rank, as the reference did);
    the other ranks build the same architecture on the meta device, shard it, and receive rank 0's
    weights and buffers by broadcast.
    """
    from beingh.model.beingh import BeingH

    if info.is_main:
        model = build_train_model(args, tokenizer)
        broadcast_object(model.config)
    else:
        with torch.device("meta"):
            model = BeingH(broadcast_object(None))
    report = apply_freeze(model, args.freeze)
    full_state = model.state_dict() if info.is_main else {}
    if info.is_main:
        model.to(info.device)
    apply_fsdp(model, model.fsdp_units(), info)
    if info.world_size > 1:
        if not info.is_main:
            model.to_empty(device=info.device)
        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
        set_model_state_dict(model, full_state, options=options)
        broadcast_buffers(model)
    return model, report


def build_train_model(args: TrainArgs, tokenizer: Any, dtype: torch.dtype = torch.float32) -> Any:
    """The model on CPU (fp32 master weights for training; `benchmarks/full_shape_smoke.py` asks for bf16),
    its embeddings grown to the tokenizer's vocabulary."""
    from beingh.model.loading import build_model

    overrides = model_overrides(args)
    if args.paths.resume_from:
        model = _model_from_checkpoint(Path(args.paths.resume_from), overrides, len(tokenizer)).to(dtype)
    else:
        model = build_model(
            args.paths.mllm_path, args.paths.expert_path, overrides, vocab_size=len(tokenizer), dtype=dtype
        )
        LOG.info("built model from %s and expert config %s", args.paths.mllm_path, args.paths.expert_path)
    config = model.config
    if config.mpg_active:
        LOG.info("MPG semantics: %s (set --mpg_semantics to choose)", config.mpg_semantics)
    return model


MPG_PREFIXES = ("mpg.", "action_to_vlm_proj.", "vlm_to_action_proj.")


def _model_from_checkpoint(ckpt: Path, overrides: dict[str, Any], vocab_size: int) -> Any:
    """Architecture and weights from a Being-H05 checkpoint; training behaviour from the arguments.

    MPG weights may be absent (MPG switched on for post-training: they start fresh) or unused (switched
    off); any other missing, unexpected or mismatched weight is an error.
    """
    from beingh.model.beingh import BeingH
    from beingh.model.config import BeingHConfig
    from beingh.model.loading import load_checkpoint

    config = BeingHConfig.load(ckpt / "config.json").with_overrides(overrides)
    if vocab_size > config.llm.vocab_size:
        config = config.with_overrides({"llm": {"vocab_size": vocab_size}})
    model = BeingH(config)
    report = load_checkpoint(model, ckpt, strict=False)
    bad_missing = [k for k in report.missing if not k.startswith(MPG_PREFIXES)]
    bad_unexpected = [k for k in report.unexpected if config.use_mpg or not k.startswith(MPG_PREFIXES)]
    if bad_missing or bad_unexpected or report.mismatched:
        raise ValueError(f"--resume_from {ckpt} does not match the model built from it: {report.summary()}")
    LOG.info("loaded weights from %s: %s", ckpt, report.summary())
    return model


def build_data(args: TrainArgs, tokenizer: Any, info: DistInfo) -> TrainData:
    """This rank's pack stream over the YAML's groups; statistics are cached under `<output_dir>/stats`."""
    from beingh.data.pipeline import build_train_loader

    def build() -> Any:
        return build_train_loader(
            args.paths.dataset_config_file,
            tokenizer,
            data_args=args.data,
            sequence_args=args.sequence,
            action_chunk_length=args.model.action_chunk_length,
            conv_style=args.model.conv_style,
            rank=info.rank,
            world_size=info.world_size,
            seed=args.training.seed,
            stats_cache_dir=args.output_dir / "stats",
            pin_memory=info.device.type == "cuda",
            log=LOG,
        )

    # Rank 0 computes (and caches) the statistics first, so ranks never write the cache concurrently.
    loader = build() if info.is_main else None
    barrier()
    if loader is None:
        loader = build()
    hierarchical = args.training.save_merged_metadata
    try:
        loader.check_metadata(hierarchical)
    except ValueError as err:
        raise ArgumentError(f"--save_merged_metadata False: {err}; pass --save_merged_metadata True") from err
    return TrainData(loader, partial(loader.write_metadata, hierarchical=hierarchical))
