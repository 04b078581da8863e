"""bf16 against fp32: one forward of the same random-weight model on the same pack, noise and flow time.

The fp32 model (TF32 off) is the reference; its bf16 copy (bf16 parameters and images, as `model_step` and
`policy_latency` run it) gets the same pack. Compared: the predicted velocity of a training forward (the
action decoder's output, read with a forward hook) and the chunk of one cached `sample_actions` call from
the same noise. Errors: max |bf16 - fp32|, that max relative to max |fp32|, and ||bf16 - fp32|| / ||fp32||.
Prints one JSON object.

    python benchmarks/precision_check.py           # 2B shape on the GPU
    python benchmarks/precision_check.py --tiny    # tiny config on the CPU
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from beingh.batch import PackedBatch  # noqa: E402
from beingh.model.beingh import BeingH  # noqa: E402
from beingh.model.config import BeingHConfig  # noqa: E402
from beingh.model.tiny import LIBERO_TEXT_LENS, synthetic_packed_batch, tiny_config  # noqa: E402


def errors(test: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    diff = (test.double() - reference.double()).abs()
    ref = reference.double()
    return {
        "max_abs_err": diff.max().item(),
        "max_rel_err": (diff.max() / ref.abs().max()).item(),
        "rel_l2_err": (diff.norm() / ref.norm()).item(),
        "reference_max_abs": ref.abs().max().item(),
        "finite": bool(torch.isfinite(test).all()),
    }


def velocity_and_loss(model: BeingH, batch, noise: torch.Tensor, time: torch.Tensor):
    """The velocity the action decoder predicts in one forward (B, T, 200), and the loss."""
    captured = []
    handle = model.action_decoder.register_forward_hook(lambda module, inputs, out: captured.append(out))
    try:
        with torch.no_grad():
            loss = model(batch, noise=noise, time=time).loss
    finally:
        handle.remove()
    return captured[0].view(noise.shape), loss


def _bf16_images(batch: PackedBatch) -> PackedBatch:
    return replace(batch, pixel_values=batch.pixel_values.to(torch.bfloat16))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny config on the CPU")
    parser.add_argument("--samples", type=int, default=4, help="samples in the pack (2 views each)")
    parser.add_argument("--mpg", action=argparse.BooleanOptionalAction, default=True,
                        help="MPG on as in the training guide (lambda 0.1)")
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    if device.type != "cuda" and not args.tiny:
        print("the 2B check needs a CUDA device; use --tiny on CPU", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    overrides = {"use_mpg": args.mpg, "mpg_lambda": 0.1 if args.mpg else 0.0}
    config = tiny_config(**overrides) if args.tiny else BeingHConfig(**overrides)
    torch.manual_seed(0)
    with torch.device("meta"):
        fp32 = BeingH(config)
    fp32.to_empty(device=device)
    fp32.init_weights()
    fp32.eval()
    bf16 = copy.deepcopy(fp32).to(torch.bfloat16)

    batch = synthetic_packed_batch(config, [2] * args.samples, text_lens=LIBERO_TEXT_LENS).to(device)
    gen = torch.Generator().manual_seed(1)
    noise = torch.randn(batch.action.shape, generator=gen).to(device)
    time = torch.linspace(0.1, 0.9, batch.num_samples).to(device)
    v32, loss32 = velocity_and_loss(fp32, batch, noise, time)
    v16, loss16 = velocity_and_loss(bf16, _bf16_images(batch), noise, time)

    single = synthetic_packed_batch(config, [2], text_lens=LIBERO_TEXT_LENS, seed=2).to(device)
    chunk32 = fp32.sample_actions(single, noise=noise[:1])
    chunk16 = bf16.sample_actions(_bf16_images(single), noise=noise[:1])

    result = {
        "benchmark": "precision_check",
        "config": {
            "model": "tiny" if args.tiny else "beingh-2B (InternViT-300M + Qwen3-1.7B-shaped LLM + 0.6B expert)",
            "parameters": sum(p.numel() for p in fp32.parameters()),
            "mpg": args.mpg,
            "samples": batch.num_samples,
            "pack_tokens": batch.num_tokens,
            "reference": "fp32, TF32 off",
            "attn_backend": config.attn_backend,
        },
        "device": {
            "type": device.type,
            "name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__,
        },
        "velocity": errors(v16, v32),
        "loss_fp32": loss32.item(),
        "loss_bf16": loss16.item(),
        "sample_actions": {"num_steps": config.num_inference_timesteps, **errors(chunk16, chunk32)},
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
