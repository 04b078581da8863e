"""The training run: build, shard, optimise, log, checkpoint, resume.

One optimizer step consumes `gradient_accumulation_steps` packs per rank. Exactly `max_steps` steps run
(the reference ran max_steps + 2). The torch RNG is reseeded before every micro-batch from its index
in the global stream (see `micro_batch_seed`), so noise differs across ranks and a resumed run
continues exactly where an uninterrupted one would be. Before `optimizer.step()`, every step checks its
loss (on every rank) and gradient norm: a non-finite step updates nothing and is counted in the log
(`beingh.train.loss`, which also holds the `pack`/`global` loss normalisation).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from beingh.data.tokenizer import save_tokenizer
from beingh.train.args import TrainArgs, is_full_state_checkpoint
from beingh.train.build import DataFactory, build_data, build_sharded_model, load_train_tokenizer
from beingh.train.checkpoint import (
    TrainerState,
    load_train_state,
    recover_interrupted_saves,
    save_checkpoint,
    verify_resume_checkpoint,
)
from beingh.train.distributed import (
    init_distributed,
    micro_batch_seed,
    rng_state,
    seed_everything,
    set_rng_state,
    shutdown_distributed,
)
from beingh.train.loss import NonFiniteGuard, micro_batch_objective, normalize_gradients, step_statistics
from beingh.train.metrics import LOG, MetricTracker, setup_logging
from beingh.train.optim import build_optimizer, build_scheduler

OOM_HINTS = (
    "CUDA ran out of memory. Try: a smaller --max_num_tokens / --expected_num_tokens (fewer tokens per "
    "pack), --grad_checkpoint True (recompute activations), --freeze_vit True or --freeze_mllm True "
    "(no gradients/optimizer state for the backbone), or more GPUs (FSDP shards parameters and "
    "optimizer state across them)."
)


def _scalar_metrics(output: Any) -> dict[str, torch.Tensor]:
    metrics = {"loss": output.loss, "action_loss": output.action_loss}
    for name, value in output.metrics.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            metrics[name] = value.reshape(())
    return metrics


def _is_step(step: int, every: int, start: int = 0) -> bool:
    return step >= start and step % every == 0


class Trainer:
    """One rank of a run. `setup()` builds everything, `fit()` trains to `max_steps` and returns the
    last checkpoint folder."""

    def __init__(self, args: TrainArgs, data_factory: DataFactory | None = None):
        self.args = args
        self.data_factory = data_factory or build_data
        self.info = init_distributed()
        self.output_dir = args.output_dir
        setup_logging(self.output_dir, self.info)

    def setup(self) -> None:
        args, info, t = self.args, self.info, self.args.training
        if info.is_main:
            recover_interrupted_saves(self.output_dir)
            (self.output_dir / "train_args.json").write_text(json.dumps(args.to_dict(), indent=2))
        LOG.info("world size %d, device %s", info.world_size, info.device)
        resume = Path(args.paths.resume_from) if args.paths.resume_from else None
        full_resume = resume is not None and not args.model.resume_model_only and is_full_state_checkpoint(resume)
        if resume is not None:
            verify_resume_checkpoint(resume, full_resume, info)
        self.tokenizer = load_train_tokenizer(args)
        # Data before the model: a bad dataset fails in seconds, not after loading 2B parameters.
        self.data = self.data_factory(args, self.tokenizer, info)
        if info.is_main:
            self.data.write_metadata(self.output_dir / "experiment_cfg")
        seed_everything(t.seed)
        self.model, report = build_sharded_model(args, self.tokenizer, info)
        LOG.info("%s", report.summary())
        self.optimizer = build_optimizer(
            self.model, t.learning_rate, t.weight_decay, (t.beta1, t.beta2), t.eps
        )
        self.scheduler = build_scheduler(
            self.optimizer, t.lr_scheduler, t.max_steps, t.warmup_ratio, t.learning_rate, t.min_lr
        )
        self.state = TrainerState(step=0, world_size=info.world_size)
        self.metric_state = None
        if full_resume:
            self.state, rank_state = load_train_state(
                resume, self.model, self.optimizer, self.scheduler, info
            )
            self.data.packs.load_state_dict(rank_state["data"])
            set_rng_state(rank_state["rng"])
            self.metric_state = rank_state["metrics"]
            LOG.info("resumed full training state from %s at step %d", resume, self.state.step)
        if self.state.step >= t.max_steps:
            raise ValueError(
                f"--resume_from {resume} is at step {self.state.step}, already --max_steps {t.max_steps}"
            )

    def fit(self) -> Path:
        t, state = self.args.training, self.state
        tracker = MetricTracker(self.info, self.output_dir, self.args.logging_dir, t.max_steps, state.step)
        if self.metric_state is not None:
            tracker.load_state_dict(self.metric_state)
        self.tracker = tracker
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        guard = NonFiniteGuard(t.max_consecutive_nonfinite_steps)
        packs = iter(self.data.packs)
        self.model.train()
        last_saved = None
        try:
            while state.step < t.max_steps:
                outputs = [self._micro_step(next(packs), m, tracker) for m in range(t.gradient_accumulation_steps)]
                grad_norm, lr, applied = self._optimizer_step(trainable, outputs, guard)
                tracker.step_done(applied)
                if _is_step(state.step, t.logging_steps) or state.step == t.max_steps:
                    tracker.log(state.step, lr, grad_norm)
                if _is_step(state.step, t.save_steps, t.save_steps_start) or state.step == t.max_steps:
                    last_saved = self.save()
        finally:
            tracker.close()
        LOG.info("training done: %d steps, last checkpoint %s", state.step, last_saved)
        return last_saved

    def _optimizer_step(
        self, trainable: list[torch.nn.Parameter], outputs: list[Any], guard: NonFiniteGuard
    ) -> tuple[float, float, bool]:
        """Normalise, clip, check, step, schedule; returns the pre-clip gradient norm, the step's LR and
        whether the weights were updated.

        A step whose loss (on any rank) or gradient norm is not finite updates nothing: the gradients are
        dropped, the step still counts (data, schedule) and `guard` raises after too many in a row.
        """
        t = self.args.training
        loss_finite, total_elements = step_statistics(outputs)
        if t.loss_normalization == "global":
            normalize_gradients(trainable, total_elements, self.info.world_size)
        grad_norm = torch.nn.utils.clip_grad_norm_(
            trainable, t.max_grad_norm if t.max_grad_norm > 0 else float("inf"), foreach=True
        )
        grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
        lr = self.scheduler.get_last_lr()[0]
        applied = guard.step_ok(self.state.step + 1, loss_finite, grad_norm)
        if applied:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
        return grad_norm, lr, applied

    def _micro_step(self, pack, micro: int, tracker: MetricTracker) -> Any:
        """Forward/backward of one pack; gradients are reduced across ranks on the last micro-step only."""
        t, info = self.args.training, self.info
        accum = t.gradient_accumulation_steps
        batch = pack.to(info.device, non_blocking=True)
        global_micro = (self.state.step * accum + micro) * info.world_size + info.rank
        torch.manual_seed(micro_batch_seed(t.seed, global_micro))
        self.model.set_requires_gradient_sync(micro == accum - 1)
        output = self.model(batch)
        micro_batch_objective(output, t.loss_normalization, accum).backward()
        tracker.add_micro_batch(_scalar_metrics(output), batch.num_samples, batch.num_tokens)
        self.state.samples_seen += batch.num_samples
        self.state.tokens_seen += batch.num_tokens
        return output

    def save(self) -> Path:
        """Checkpoint the current step (collective)."""
        started = time.perf_counter()
        path = save_checkpoint(
            self.output_dir,
            self.state.step,
            self.model,
            self.optimizer,
            self.scheduler,
            self.state,
            {"data": self.data.packs.state_dict(), "rng": rng_state(), "metrics": self.tracker.state_dict()},
            self._write_rank0_files,
            self.info,
            save_model_only=self.args.training.save_model_only,
            keep_last_n=self.args.training.keep_last_n_checkpoints,
        )
        LOG.info("saved checkpoint %s (%.1f s)", path, time.perf_counter() - started)
        return path

    def _write_rank0_files(self, folder: Path) -> None:
        self.model.config.save(folder / "config.json")
        save_tokenizer(self.tokenizer, folder)
        self.data.write_metadata(folder / "experiment_cfg")
        (folder / "train_args.json").write_text(json.dumps(self.args.to_dict(), indent=2))

    def close(self) -> None:
        shutdown_distributed()


def train(args: TrainArgs, data_factory: DataFactory | None = None) -> Path:
    """Run training with `args` in this process (one rank of a torchrun job, or alone)."""
    trainer = Trainer(args, data_factory)
    try:
        trainer.setup()
        return trainer.fit()
    except torch.OutOfMemoryError as err:
        raise RuntimeError(f"{OOM_HINTS}\n(original error: {err})") from err
    finally:
        trainer.close()
