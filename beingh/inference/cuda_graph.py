"""The cached flow loop replayed from a CUDA graph: `sample_actions` without per-kernel launch cost.

At batch size 1 the Euler steps are launch-bound: each step runs the action expert on 16 tokens through
every decoder layer, about a thousand small kernels, and MPG doubles the steps. The loop
(`BeingH.integrate` over `BeingH.cached_velocity`) has static shapes for a given pack layout and never
syncs, so it is captured once per layout and replayed as one graph launch. Per call, the prefix pass
(ViT + decoder over text, images and state; eager or `compile_for_inference`) runs as usual, its K/V
cache, state features and flow start (`CachedFlow.tensors()`) are copied into the captured tensors, and
the graph is replayed.

A graph is replayed only for a pack whose layout (`LAYOUT_FIELDS` and `sample_lens`) equals the captured
one, since the mask, RoPE tables and row order baked into it derive from the layout; a policy reuses its
layout tensors from call to call, so the check is an identity test there. Another layout captures its own
graph (the `max_graphs` most recent are kept).

On a CPU there are no graphs: the same bookkeeping runs the captured function eagerly on the same static
tensors, a twin whose results tests compare with `BeingH.sample_actions`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from beingh.batch import PackedBatch
from beingh.model.beingh import BeingH, CachedFlow

logger = logging.getLogger(__name__)

LAYOUT_FIELDS = (
    "position_ids",
    "segment_ids",
    "text_indexes",
    "image_token_indexes",
    "state_indexes",
    "action_indexes",
)
"""Pack fields that fix the loop's mask, RoPE tables and row order (with `sample_lens`)."""


@dataclass(eq=False)
class _Graph:
    steps: int
    sample_lens: list[int]
    layout: list[torch.Tensor]
    static: list[torch.Tensor]
    """The capture call's `CachedFlow.tensors()`: later calls copy theirs into these."""
    replay: Callable[[], torch.Tensor]

    def matches(self, batch: PackedBatch, steps: int, flow: CachedFlow) -> bool:
        if steps != self.steps or list(batch.sample_lens) != self.sample_lens:
            return False
        if [t.shape for t in flow.tensors()] != [t.shape for t in self.static]:
            return False  # e.g. one noise for all MPG passes vs one per pass
        return all(
            ours is theirs or (ours.shape == theirs.shape and torch.equal(ours, theirs))
            for ours, theirs in zip(self.layout, _layout(batch))
        )


def _layout(batch: PackedBatch) -> list[torch.Tensor]:
    return [getattr(batch, name) for name in LAYOUT_FIELDS]


class CUDAGraphSampler:
    """`BeingH.sample_actions(batch, num_steps, noise, prefix_actions, prefix_len)` (prefix cache on) with
    the flow loop captured once per pack layout and replayed."""

    def __init__(self, model: BeingH, max_graphs: int = 8, warmup: int = 2):
        if max_graphs < 1:
            raise ValueError(f"max_graphs must be >= 1, got {max_graphs}")
        self.model = model
        self.max_graphs = max_graphs
        self.warmup = warmup
        self.captures = 0
        """Graphs captured so far (a new layout or step count captures one)."""
        self._graphs: list[_Graph] = []

    @torch.inference_mode()
    def __call__(
        self,
        batch: PackedBatch,
        num_steps: int | None = None,
        noise: torch.Tensor | None = None,
        prefix_actions: torch.Tensor | None = None,
        prefix_len: torch.Tensor | int = 0,
    ) -> torch.Tensor:
        steps = num_steps or self.model.config.num_inference_timesteps
        flow = self.model.prepare_cached_flow(batch, noise, prefix_actions, prefix_len)
        graph = next((g for g in self._graphs if g.matches(batch, steps, flow)), None)
        if graph is None:
            graph = self._capture(batch, flow, steps)
        else:
            torch._foreach_copy_(graph.static, flow.tensors())
        self._graphs.remove(graph)
        self._graphs.insert(0, graph)
        del self._graphs[self.max_graphs :]
        return graph.replay().clone()

    def _capture(self, batch: PackedBatch, flow, steps: int) -> _Graph:
        """A graph of the loop reading `flow`'s tensors (this call's: they become the static inputs)."""
        velocity = self.model.cached_velocity(batch, flow)

        def run() -> torch.Tensor:
            return self.model.integrate(velocity, flow.start, steps)

        device = flow.start.noise.device
        replay = run
        if device.type == "cuda":
            replay = _cuda_graph(run, device, self.warmup)
        self.captures += 1
        logger.info("captured the flow loop for a %d-token pack (%d steps)", batch.num_tokens, steps)
        graph = _Graph(steps, list(batch.sample_lens), _layout(batch), flow.tensors(), replay)
        self._graphs.append(graph)
        return graph


def _cuda_graph(run: Callable[[], torch.Tensor], device: torch.device, warmup: int) -> Callable[[], torch.Tensor]:
    """Capture `run` (after `warmup` runs on a side stream, which also triggers any lazy compile or
    allocation) and return a function that replays it and returns its static output."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            run()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            output = run()
    except RuntimeError as err:
        raise RuntimeError(
            f"CUDA graph capture of the flow loop failed ({err}); sample without cuda_graph"
        ) from err

    def replay() -> torch.Tensor:
        graph.replay()
        return output

    return replay
