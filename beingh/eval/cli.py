"""`beingh eval --env metaworld|libero|robocasa ...`: closed-loop evaluation of a checkpoint or a policy server."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

ENVS = ("metaworld", "libero", "robocasa")
DEFAULT_DATA_CONFIGS = {"metaworld": "metaworld", "libero": "libero_nonorm", "robocasa": "robocasa_human"}


def _add_policy_args(parser: argparse.ArgumentParser, env: str, default_tag: str) -> None:
    group = parser.add_argument_group("policy")
    group.add_argument("--policy", required=True, help="checkpoint folder or ws://host:port of `beingh serve`")
    group.add_argument("--data_config_name", default=None,
                       help="default: the one the checkpoint (or server) was trained with, "
                       f"else {DEFAULT_DATA_CONFIGS[env]}")
    group.add_argument("--embodiment_tag", default=default_tag)
    group.add_argument("--dataset_name", default=None,
                       help="metadata group (default: the one <group>_metadata.json in experiment_cfg/)")
    group.add_argument("--instruction_template", default=None,
                       help="default: the checkpoint's training --prompt_template (train_args.json), else long")
    group.add_argument("--metadata_variant", default=None)
    group.add_argument("--stats_selection_mode", default="auto", choices=("auto", "task", "embodiment"))
    group.add_argument("--device", default=None)
    group.add_argument("--num_inference_timesteps", type=int, default=None)
    group.add_argument("--rtc", action="store_true", help="real-time chunking: report executed steps each call")
    group.add_argument("--rtc_inference_delay", type=int, default=None,
                       help="steps locked from the previous chunk (default: measured inference time x fps)")
    group.add_argument("--execute_steps", type=int, default=8, help="actions executed per chunk before replanning")
    group.add_argument("--output", type=Path, default=None, help="results JSON")
    group.add_argument("--video_dir", type=Path, default=None, help="mp4s of the first episodes per task")


def _policy_spec(args: argparse.Namespace):
    from beingh.eval.policy_loader import PolicySpec

    return PolicySpec(
        default_data_config=DEFAULT_DATA_CONFIGS[args.env],
        policy=args.policy, data_config_name=args.data_config_name, embodiment_tag=args.embodiment_tag,
        dataset_name=args.dataset_name, instruction_template=args.instruction_template,
        metadata_variant=args.metadata_variant, stats_selection_mode=args.stats_selection_mode,
        device=args.device, num_inference_timesteps=args.num_inference_timesteps, enable_rtc=args.rtc,
        rtc_inference_delay=args.rtc_inference_delay,
    )


def build_parser(env: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"beingh eval --env {env}")
    parser.add_argument("--env", choices=ENVS, required=True)
    if env == "metaworld":
        from beingh.eval.metaworld_env import EVAL_SEED_START

        _add_policy_args(parser, env, "metaworld")
        parser.add_argument("--tasks", default="reach-v3,push-v3")
        parser.add_argument("--episodes", type=int, default=20, help="episodes per task")
        parser.add_argument("--max_steps", type=int, default=200)
        parser.add_argument("--image_size", type=int, default=224, help="camera resolution (use the demos' size)")
        parser.add_argument("--camera", default="corner2")
        parser.add_argument("--seed_start", type=int, default=EVAL_SEED_START,
                            help=f"first evaluation seed (>= {EVAL_SEED_START}: never a training seed)")
        parser.add_argument("--videos_per_task", type=int, default=2)
    elif env == "libero":
        from beingh.eval.libero_client import add_libero_args

        _add_policy_args(parser, env, "libero")
        add_libero_args(parser)
    else:
        from beingh.eval.robocasa_client import add_robocasa_args

        _add_policy_args(parser, env, "robocasa")
        add_robocasa_args(parser)
    return parser


def _env_name(argv: list[str]) -> str:
    pre = argparse.ArgumentParser(prog="beingh eval", add_help=False)
    pre.add_argument("--env", choices=ENVS)
    known, _ = pre.parse_known_args(argv)
    if known.env is None and any(a in ("-h", "--help") for a in argv):
        pre.print_usage()
        print(f"--env is required ({', '.join(ENVS)}); `beingh eval --env ENV --help` lists that env's options")
        raise SystemExit(0)
    if known.env is None:
        pre.print_usage(sys.stderr)
        print(f"beingh eval: --env is required ({', '.join(ENVS)}); add --help after it for its options",
              file=sys.stderr)
        raise SystemExit(2)
    return known.env


def run_metaworld(args: argparse.Namespace) -> dict:
    from beingh.eval.metaworld_env import parse_tasks
    from beingh.eval.policy_loader import open_policy
    from beingh.eval.rollout import RolloutConfig, evaluate

    tasks = parse_tasks(args.tasks)
    spec = _policy_spec(args)
    policy = open_policy(spec)
    config = RolloutConfig(execute_steps=args.execute_steps, max_steps=args.max_steps, rtc=args.rtc,
                           image_size=args.image_size, camera=args.camera, data_config_name=spec.data_config_name)
    try:
        return evaluate(policy, tasks, args.episodes, config, seed_start=args.seed_start,
                        video_dir=args.video_dir, videos_per_task=args.videos_per_task)
    finally:
        if hasattr(policy, "close"):
            policy.close()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    env = _env_name(argv)
    args = build_parser(env).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if env == "metaworld":
        results = run_metaworld(args)
    elif env == "libero":
        from beingh.eval.libero_client import run_libero

        results = run_libero(args, _policy_spec(args))
    else:
        from beingh.eval.robocasa_client import run_robocasa

        results = run_robocasa(args, _policy_spec(args))
    summary = {task: round(r["success_rate"], 3) for task, r in results["tasks"].items()}
    print(json.dumps({"success_rate": summary, "overall": round(results["overall_success_rate"], 3)}, indent=2))
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(results, indent=2))
        print(f"results: {args.output}")
    return 0
