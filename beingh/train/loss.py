"""What one optimizer step backpropagates, and its guard against non-finite losses and gradients.

Loss normalisation over the micro-batches (packs) of a step, on every rank:
- `pack` (default, the original's): each pack's loss is the mean over its valid action elements, and the
  step averages the packs (`loss / gradient_accumulation_steps`, FSDP averages over ranks). A pack with few
  valid elements (short chunks, a 7-dof arm next to a 30-dof humanoid) weighs as much as a full one.
- `global` (torchtitan's): the step's loss is the sum of squared errors over every valid action element of
  every pack of every rank, divided by their total number, so every element weighs the same and the
  result does not depend on how the samples are split into packs, accumulation steps and ranks. Each pack
  backpropagates its plain sum (its valid-element count is known only after its forward, which draws the
  RTC delays); once all are done, `normalize_gradients` divides the gradients by the all-reduced count.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import nn

from beingh.train.distributed import all_reduce_sum

LOG = logging.getLogger("beingh.train")
LOSS_NORMALIZATIONS = ("pack", "global")


def micro_batch_objective(output, normalization: str, accumulation_steps: int) -> torch.Tensor:
    """The scalar to backpropagate for one pack (`output` is a `BeingHOutput`)."""
    if normalization == "pack":
        return output.loss / accumulation_steps
    if normalization == "global":
        return output.action_loss_sum
    raise ValueError(f"loss normalization must be one of {LOSS_NORMALIZATIONS}, got {normalization!r}")


def step_statistics(outputs: list) -> tuple[bool, float]:
    """(the step's loss is finite on every rank, number of valid action elements of the step summed over
    its packs and all ranks), from this rank's `BeingHOutput`s: one all-reduce, one host sync."""
    loss = torch.stack([o.loss.detach().float() for o in outputs]).sum()
    elements = torch.stack([o.num_action_elements.detach().float() for o in outputs]).sum()
    local = torch.stack([(~torch.isfinite(loss)).double(), elements.double()])
    bad, total = all_reduce_sum(local).tolist()
    return bad == 0.0, total


@torch.no_grad()
def normalize_gradients(params: list[nn.Parameter], total_elements: float, world_size: int) -> None:
    """`global` normalisation: scale the summed-error gradients to the mean over all valid elements.

    The gradients were averaged over ranks by FSDP, hence the factor `world_size / total_elements`.
    """
    scale = world_size / max(total_elements, 1.0)
    for param in params:
        if param.grad is not None:
            param.grad.mul_(scale)


class NonFiniteStepError(FloatingPointError):
    """Too many consecutive steps had a non-finite loss or gradient norm."""


@dataclass
class NonFiniteGuard:
    """Decides whether a step may update the weights (finite loss and gradient norm); raises after
    `max_consecutive` skipped steps in a row. The run's total is `MetricTracker.skipped_steps`."""

    max_consecutive: int
    consecutive: int = 0

    def step_ok(self, step: int, loss_finite: bool, grad_norm: float) -> bool:
        """Whether step `step` may update the weights; logs a skipped step."""
        if loss_finite and math.isfinite(grad_norm):
            self.consecutive = 0
            return True
        self.consecutive += 1
        what = "loss" if not loss_finite else f"gradient norm ({grad_norm})"
        LOG.warning("step %d: non-finite %s, update skipped (%d in a row)", step, what, self.consecutive)
        if self.consecutive >= self.max_consecutive:
            raise NonFiniteStepError(
                f"{self.consecutive} consecutive steps (up to step {step}) had a non-finite loss or gradient "
                f"norm (--max_consecutive_nonfinite_steps {self.max_consecutive}): lower --learning_rate, "
                "check the data statistics (normalization) or --max_grad_norm"
            )
        return False
