"""Training metrics: interval averages over every micro-batch, written to training.log, TensorBoard,
`metrics.jsonl` (one JSON record per logging step), stdout (tqdm bar on rank 0) and, at the end, a
loss-curve PNG.

Losses are averaged over all micro-batches of the interval and over ranks (the reference logged the
last micro-batch); throughput counts samples and tokens of all ranks. A resumed run keeps the records up
to its start step, so `metrics.jsonl` and the curve cover the whole run.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from beingh.train.distributed import DistInfo, all_reduce_sum

LOG = logging.getLogger("beingh.train")
METRICS_FILE = "metrics.jsonl"


class _TqdmHandler(logging.StreamHandler):
    """Console lines printed above the progress bar instead of through it."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record), file=sys.stdout)


def setup_logging(output_dir: Path, info: DistInfo) -> None:
    """Rank 0 logs INFO to stdout and `<output_dir>/training.log`; other ranks log warnings only."""
    LOG.handlers.clear()
    LOG.propagate = False
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    LOG.setLevel(logging.INFO if info.is_main else logging.WARNING)
    stream = _TqdmHandler()
    stream.setFormatter(fmt)
    LOG.addHandler(stream)
    if info.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(output_dir / "training.log")
        file_handler.setFormatter(fmt)
        LOG.addHandler(file_handler)


class MetricTracker:
    """Accumulates per-micro-batch metrics between two logging steps and reports their averages."""

    def __init__(self, info: DistInfo, output_dir: Path, logging_dir: Path, max_steps: int, start_step: int):
        self.info = info
        self.output_dir = output_dir
        self.max_steps = max_steps
        self.start_step = start_step
        self.history: list[dict[str, float]] = []
        self._sums: dict[str, torch.Tensor] = {}
        self._micro_batches = 0
        self._step_sums: dict[str, torch.Tensor] = {}
        self._step_micro_batches = 0
        self.skipped_steps = 0
        """Steps whose update was skipped (non-finite loss or gradient norm) since the run started."""
        self._samples = 0
        self._tokens = 0
        self._interval_start = time.perf_counter()
        self._run_start = self._interval_start
        self.writer = None
        self.bar = None
        if info.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self.history = _earlier_records(output_dir / METRICS_FILE, start_step)
            (output_dir / METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in self.history))

            # purge_step hides events a crashed run logged after the checkpoint it is resumed from.
            self.writer = SummaryWriter(
                log_dir=str(logging_dir), purge_step=start_step + 1 if start_step else None
            )
            self.bar = tqdm(
                total=max_steps,
                initial=start_step,
                desc="train",
                unit="step",
                dynamic_ncols=True,
                file=sys.stdout,
            )

    def add_micro_batch(self, metrics: dict[str, torch.Tensor], num_samples: int, num_tokens: int) -> None:
        """Record one micro-batch's scalar metrics (detached; summed on device, no host sync)."""
        _accumulate(self._step_sums, metrics)
        self._step_micro_batches += 1
        self._samples += num_samples
        self._tokens += num_tokens

    def state_dict(self) -> dict[str, float | dict[str, float]]:
        """This rank's running sums of the current logging interval (saved in checkpoints, so a run resumed
        between two logging steps logs the same averages as an uninterrupted one)."""
        return {
            "sums": {name: float(value) for name, value in self._sums.items()},
            "micro_batches": self._micro_batches,
            "samples": self._samples,
            "tokens": self._tokens,
            "elapsed_s": time.perf_counter() - self._interval_start,
            "skipped_steps": self.skipped_steps,
        }

    def load_state_dict(self, state: dict) -> None:
        self._sums = {
            name: torch.tensor(value, dtype=torch.float32, device=self.info.device)
            for name, value in state["sums"].items()
        }
        self._micro_batches = int(state["micro_batches"])
        self._samples = int(state["samples"])
        self._tokens = int(state["tokens"])
        self._interval_start = time.perf_counter() - float(state["elapsed_s"])
        self.skipped_steps = int(state.get("skipped_steps", 0))

    def step_done(self, applied: bool = True) -> None:
        """Close the step: its metrics join the interval averages unless its update was skipped (a
        non-finite step must not turn the logged averages into NaN); its samples and tokens always count."""
        if applied:
            _accumulate(self._sums, self._step_sums)
            self._micro_batches += self._step_micro_batches
        else:
            self.skipped_steps += 1
        self._step_sums = {}
        self._step_micro_batches = 0
        if self.bar is not None:
            self.bar.update(1)

    def log(
        self, step: int, lr: float, grad_norm: float, extra: dict[str, float] | None = None
    ) -> dict[str, float]:
        """Average the interval over micro-batches and ranks, write it everywhere (collective)."""
        names = sorted(self._sums)
        device = next(iter(self._sums.values())).device if names else self.info.device
        packed = torch.stack([self._sums[n] for n in names]) if names else torch.zeros(0, device=device)
        counts = torch.tensor(
            [self._micro_batches, self._samples, self._tokens], dtype=torch.float64, device=device
        )
        packed, counts = all_reduce_sum(packed), all_reduce_sum(counts)
        now = time.perf_counter()
        elapsed = max(now - self._interval_start, 1e-9)
        micro, samples, tokens = (float(c) for c in counts.tolist())
        record = {name: float(v) / max(micro, 1.0) for name, v in zip(names, packed.tolist())}
        done = step - self.start_step
        rate = done / max(now - self._run_start, 1e-9)
        record.update(
            lr=lr,
            grad_norm=grad_norm,
            samples_per_s=samples / elapsed,
            tokens_per_s=tokens / elapsed,
            eta_s=(self.max_steps - step) / rate if rate > 0 else float("nan"),
            nonfinite_skipped_steps=self.skipped_steps,
            **(extra or {}),
        )
        self._sums.clear()
        self._micro_batches = self._samples = self._tokens = 0
        self._interval_start = now
        if self.info.is_main:
            self.history.append({"step": step, **record})
            with open(self.output_dir / METRICS_FILE, "a") as f:
                f.write(json.dumps(self.history[-1]) + "\n")
            for name, value in record.items():
                self.writer.add_scalar(f"train/{name}", value, step)
            self.writer.flush()
            parts = " | ".join(f"{k} {_fmt(v)}" for k, v in record.items() if k != "eta_s")
            LOG.info("step %d/%d | %s | eta %s", step, self.max_steps, parts, _fmt_eta(record["eta_s"]))
            self.bar.set_postfix(loss=f"{record.get('loss', float('nan')):.4f}", lr=f"{lr:.2e}")
        return record

    def close(self) -> None:
        if not self.info.is_main:
            return
        self.bar.close()
        self.writer.close()
        if self.history:
            plot_loss_curve(self.history, self.output_dir / "loss_curve.png")


def _accumulate(sums: dict[str, torch.Tensor], values: dict[str, torch.Tensor]) -> None:
    for name, value in values.items():
        value = value.detach().float()
        sums[name] = sums[name] + value if name in sums else value.clone()


def _earlier_records(path: Path, start_step: int) -> list[dict[str, float]]:
    """The records of `path` up to `start_step` (a resumed run continues them; a new run starts empty)."""
    if start_step == 0 or not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if r["step"] <= start_step]


def _fmt(value: float) -> str:
    return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"


def _fmt_eta(seconds: float) -> str:
    if seconds != seconds:
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours:d}:{minutes:02d}:{secs:02d}"


def plot_loss_curve(history: list[dict[str, float]], path: Path) -> None:
    """Loss (and its parts) against step, with the learning rate on a second axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in history]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name in sorted({k for r in history for k in r if k.endswith("loss")}):
        # An interval whose steps were all skipped (non-finite) has no loss: a gap in the curve.
        ax.plot(steps, [r.get(name, float("nan")) for r in history], label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    lr_ax = ax.twinx()
    lr_ax.plot(steps, [r["lr"] for r in history], color="grey", linestyle=":", label="lr")
    lr_ax.set_ylabel("learning rate")
    lines = ax.get_legend_handles_labels()
    lr_lines = lr_ax.get_legend_handles_labels()
    ax.legend(lines[0] + lr_lines[0], lines[1] + lr_lines[1], loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
