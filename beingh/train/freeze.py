"""Freeze options of the training guide, by parameter name (the released Being-H05 names).

- `freeze_vit`: the InternViT (`vit_model.*`).
- `freeze_vit_mlp`: the MLP connector between ViT and LLM (`connector.*`).
- `freeze_llm`: the VLM language weights (`language_model.*` without `_mot_gen`): embeddings, the
  understanding stream of every layer, final norm, lm_head. The action expert (`*_mot_gen*`) keeps
  training (the reference froze it too, silently disabling the expert).
- `freeze_mllm`: the entire VLM backbone, i.e. all three above. Expert, state/action encoders,
  action decoder and MPG keep training.

Fully frozen modules are put in eval mode (dropout / drop-path off) and stay there when the model is
switched to train mode later (the reference's `.eval()` calls were undone by `model.train()`).
"""

from __future__ import annotations

import types
from dataclasses import dataclass

from torch import nn

from beingh.train.args import FreezeArgs

EXPERT_MARKER = "_mot_gen"


@dataclass(frozen=True)
class FreezeReport:
    trainable: int
    frozen: int
    frozen_modules: list[str]

    def summary(self) -> str:
        total = self.trainable + self.frozen
        return (
            f"trainable parameters {self.trainable:,} / {total:,} "
            f"({100.0 * self.trainable / max(total, 1):.1f}%), frozen modules: {len(self.frozen_modules)}"
        )


def is_frozen(name: str, options: FreezeArgs) -> bool:
    """Whether the parameter `name` is frozen under `options`."""
    vit = options.freeze_vit or options.freeze_mllm
    connector = options.freeze_vit_mlp or options.freeze_mllm
    llm = options.freeze_llm or options.freeze_mllm
    if name.startswith("vit_model."):
        return vit
    if name.startswith("connector."):
        return connector
    if name.startswith("language_model."):
        return llm and EXPERT_MARKER not in name
    return False


def _stay_in_eval(module: nn.Module, mode: bool = True) -> nn.Module:
    return nn.Module.train(module, False)


def apply_freeze(model: nn.Module, options: FreezeArgs) -> FreezeReport:
    """Set `requires_grad` by name, pin fully frozen modules to eval mode; raise if nothing trains."""
    trainable = frozen = 0
    for name, param in model.named_parameters():
        param.requires_grad_(not is_frozen(name, options))
        if param.requires_grad:
            trainable += param.numel()
        else:
            frozen += param.numel()
    if trainable == 0:
        raise ValueError("the freeze options froze every parameter: nothing would train")
    pinned: list[str] = []
    for name, module in model.named_modules():
        params = list(module.parameters())
        if not params or any(p.requires_grad for p in params):
            continue
        if any(name.startswith(prefix + ".") for prefix in pinned):
            continue
        module.train = types.MethodType(_stay_in_eval, module)
        module.eval()
        pinned.append(name)
    return FreezeReport(trainable=trainable, frozen=frozen, frozen_modules=pinned)
