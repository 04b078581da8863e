"""`beingh infer`: run the policy on one observation file and print the action chunk (debugging).

Observation files:
- `.npz`: one array per observation key (`video.*` uint8 (H, W, 3), `state.*`, and
  `language.instruction` as a 0-d string array), loaded with `allow_pickle=False`;
- `.json`: `{"video.<view>": "<image file>" or nested lists, "state.<key>": [...],
  "language.instruction": "..."}`; relative image paths are relative to the JSON file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from beingh.data.prompt import IMAGE_BLOCK_LAYOUTS
from beingh.inference.checks import DEFAULT_MAX_INSTRUCTION_TOKENS
from beingh.model.mpg import MPG_SEMANTICS


def add_policy_args(parser: argparse.ArgumentParser) -> None:
    """The `BeingHPolicy` constructor arguments, shared by `beingh serve` and `beingh infer`."""
    parser.add_argument("--model_path", required=True, help="checkpoint folder")
    parser.add_argument("--data_config_name", required=True)
    parser.add_argument("--dataset_name", required=True, help="metadata group name")
    parser.add_argument("--embodiment_tag", required=True)
    parser.add_argument("--instruction_template", default="long",
                        help="'long', 'short' or a format string with {task_description}")
    parser.add_argument("--metadata_variant", default=None)
    parser.add_argument("--stats_selection_mode", default="auto", help="auto | task | embodiment | merged")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--num_inference_timesteps", type=int, default=None)
    parser.add_argument("--enable_rtc", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--use_mpg", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--mpg_lambda", type=float, default=None)
    parser.add_argument("--mpg_semantics", choices=MPG_SEMANTICS, default=None,
                        help="default: the checkpoint's ('original' for one written by the original)")
    parser.add_argument("--mpg_seed", type=int, default=None,
                        help="seed the MPG projections (default: the checkpoint's; 'original' draws per call)")
    parser.add_argument("--use_inference_prefix_overwrite", action=argparse.BooleanOptionalAction, default=None,
                        help="RTC prefix locking (default: the checkpoint's)")
    parser.add_argument("--image_block_layout", choices=IMAGE_BLOCK_LAYOUTS, default="per_view",
                        help="'single': one <img> block around all views, as the original's server")
    parser.add_argument("--dtype", default=None, help="float32 | bfloat16 (default: bf16 on CUDA, else fp32)")
    parser.add_argument("--rtc_inference_delay", type=int, default=None,
                        help="declared inference delay in control steps (default: measured)")
    parser.add_argument("--control_hz", type=float, default=None, help="default: dataset fps from the metadata")
    parser.add_argument("--max_view_num", type=int, default=-1, help="-1: all views, else the first N")
    parser.add_argument("--use_fixed_view", action="store_true", help="only the first view")
    parser.add_argument("--compile", action="store_true", help="torch.compile the ViT and decoder layers (CUDA)")
    parser.add_argument("--cuda_graph", action="store_true",
                        help="replay the cached flow loop from a CUDA graph (one capture per prompt layout)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--max_instruction_tokens", type=int, default=DEFAULT_MAX_INSTRUCTION_TOKENS,
                        help="longest accepted language.instruction, in tokens (longer ones are an error)")


def policy_from_args(args: argparse.Namespace):
    import torch

    from beingh.inference.policy import BeingHPolicy

    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    return BeingHPolicy(
        model_path=args.model_path,
        data_config_name=args.data_config_name,
        dataset_name=args.dataset_name,
        embodiment_tag=args.embodiment_tag,
        instruction_template=args.instruction_template,
        metadata_variant=args.metadata_variant,
        stats_selection_mode=args.stats_selection_mode,
        device=args.device,
        num_inference_timesteps=args.num_inference_timesteps,
        enable_rtc=args.enable_rtc,
        use_mpg=args.use_mpg,
        mpg_lambda=args.mpg_lambda,
        mpg_semantics=args.mpg_semantics,
        mpg_seed=args.mpg_seed,
        use_inference_prefix_overwrite=args.use_inference_prefix_overwrite,
        image_block_layout=args.image_block_layout,
        dtype=args.dtype,
        rtc_inference_delay=args.rtc_inference_delay,
        control_hz=args.control_hz,
        max_view_num=args.max_view_num,
        use_fixed_view=args.use_fixed_view,
        compile=args.compile,
        max_instruction_tokens=args.max_instruction_tokens,
        cuda_graph=args.cuda_graph,
    )


def load_observation(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"observation file not found: {path}")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            return {key: (data[key].item() if data[key].dtype.kind == "U" else data[key]) for key in data.files}
    if path.suffix == ".json":
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON: {err}") from err
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: expected a JSON object of observation keys")
        return {key: _json_value(key, value, path.parent) for key, value in raw.items()}
    raise ValueError(f"{path}: observation files must be .npz or .json")


def _json_value(key: str, value: Any, base: Path) -> Any:
    if key.startswith("video."):
        if isinstance(value, str):
            from PIL import Image

            with Image.open(base / value) as image:
                return np.array(image.convert("RGB"))
        return np.asarray(value, dtype=np.uint8)
    if key.startswith("state.") or key == "prev_chunk":
        return np.asarray(value, dtype=np.float64)
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="beingh infer", description=__doc__.splitlines()[0])
    add_policy_args(parser)
    parser.add_argument("--observation", required=True, help="observation file (.npz or .json)")
    parser.add_argument("--output", default=None, help="also write the result to this JSON file")
    args = parser.parse_args(argv)
    observation = load_observation(args.observation)
    policy = policy_from_args(args)
    result = {key: np.asarray(value).tolist() for key, value in policy.get_action(observation).items()}
    text = json.dumps(result, indent=1)
    if args.output:
        Path(args.output).write_text(text + "\n")
    sys.stdout.write(text + "\n")
    return 0
