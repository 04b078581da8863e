"""`beingh demo collect|run`: MetaWorld expert demos -> LeRobot v3.0 -> tiny model trained on CPU -> eval.

`beingh demo run` is the project's end-to-end proof that training works: it collects demos on training
seeds, trains a tiny Being-H model from random weights with `beingh train` (a subprocess, exactly as a
user would run it), evaluates it closed loop on disjoint evaluation seeds, and writes plots and videos.

Seeds: demos use MetaWorld layouts 0, 1, 2, ... (`TRAIN_SEED_START`, at most 3 x episodes per task, refused
at or above 10_000); evaluation uses 10_000, 10_001, ... (`EVAL_SEED_START`); the action-chunk plot uses
the held-out layout 9_999.

Measured with the default recipe (2 shared CPU cores, torch 2.13 CPU, other jobs running at the same time):
collect 50 s, train 4000 steps 540 s, evaluate 40 episodes 31 s, 10.4 min in all; success on evaluation
seeds reach-v3 17/20, push-v3 19/20. With `--data_config metaworld` (camera only, no privileged object/
goal state) the same budget reaches only 10% / 25-35%: a tiny ViT trained from scratch for minutes does
not learn to localize the goal. `--data_config metaworld_2view` adds a top-down camera (the goal's x, y
become image coordinates); measured on a quiet machine (~12 steps/s): 100 demos/task, 6000 steps, 10.5
min: reach 5/20, push 7/20; 300 demos/task, 10000 steps, 19.4 min: 7/20, 5/20; 84 px, 150 demos/task,
7000 steps, 14.2 min: 1/20, 5/20. Failed reaches stop 4-15 cm from the goal: camera-only localization,
not the amount of demos, is what the CPU budget lacks.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger("beingh.demo")

GROUP_NAME = "metaworld_demo"
PACKAGE_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class DemoRecipe:
    """The CPU recipe (2 cores, < 30 min end to end); every field is a `beingh demo run` flag."""

    tasks: str = "reach-v3,push-v3"
    data_config: str = "metaworld_goal"  # + privileged object/goal xyz as state; "metaworld": camera only;
    # "metaworld_2view": camera only, corner + top-down views (collected when the config asks for them)
    episodes: int = 50  # expert demos per task (training seeds 0..)
    image_size: int = 56  # 56 px -> 16 ViT patches -> 4 image tokens after pixel shuffle
    steps: int = 4000
    learning_rate: float = 1e-3
    warmup_ratio: float = 0.03
    max_num_tokens: int = 1024  # tokens per packed batch (~16 samples)
    llm_hidden: int = 128
    llm_layers: int = 2
    expert_hidden: int = 128
    vit_hidden: int = 64
    num_inference_timesteps: int = 4
    prompt_template: str = "short"  # the bare instruction: ~25 fewer text tokens per sample than "long"
    use_mpg: bool = False
    eval_episodes: int = 20  # per task, evaluation seeds 10_000..
    execute_steps: int = 4  # of each 16-step chunk (8 is the LIBERO protocol; 4 halves reach overshoot)
    max_steps: int = 150
    seed: int = 0
    num_workers: int = 1  # one loader process on one core ...
    torch_threads: int = 1  # ... and one intra-op thread on the other: with 2 threads on 2 busy cores,
    # OpenMP spin-waits made a training step 10-30x slower (measured 2-7 s vs 0.2 s per 1k-token step)


def _add_recipe_args(parser: argparse.ArgumentParser) -> None:
    for name, default in asdict(DemoRecipe()).items():
        if isinstance(default, bool):
            parser.add_argument(f"--{name}", type=lambda s: s.lower() in ("1", "true", "yes"), default=default,
                                help=f"true/false (default {default})")
        else:
            parser.add_argument(f"--{name}", type=type(default), default=default, help=f"default {default}")


def collect_main(argv: list[str]) -> int:
    env_parser = argparse.ArgumentParser(add_help=False)
    env_parser.add_argument("--env", default="metaworld")
    if env_parser.parse_known_args(argv)[0].env == "libero":  # runs in the LIBERO venv: no MetaWorld imports
        from beingh.eval.libero_collect import main as collect_libero

        return collect_libero(argv)
    from beingh.eval.collect import CollectConfig, collect_demos
    from beingh.eval.metaworld_env import TRAIN_SEED_START, parse_tasks

    parser = argparse.ArgumentParser(prog="beingh demo collect")
    parser.add_argument("--env", default="metaworld", choices=("metaworld", "libero"),
                        help="libero: see `beingh demo collect --env libero --help`")
    parser.add_argument("--tasks", required=True, help="comma-separated MetaWorld tasks, e.g. reach-v3,push-v3")
    parser.add_argument("--episodes", type=int, required=True, help="successful episodes per task")
    parser.add_argument("--out", type=Path, required=True, help="dataset folder to create")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--camera", default="corner2")
    parser.add_argument("--extra_cameras", default="",
                        help="comma-separated extra cameras, e.g. topview (-> observation.images.top)")
    parser.add_argument("--seed", type=int, default=TRAIN_SEED_START, help="first training seed (< 10000)")
    parser.add_argument("--keep_failed", action="store_true", help="also keep episodes the expert failed")
    parser.add_argument("--max_steps", type=int, default=200)
    parser.add_argument("--video_codec", default="h264", choices=("h264", "libsvtav1", "image"))
    args = parser.parse_args(argv)
    report = collect_demos(CollectConfig(
        tasks=parse_tasks(args.tasks), episodes=args.episodes, out=args.out, image_size=args.image_size,
        camera=args.camera, seed=args.seed, keep_failed=args.keep_failed, max_steps=args.max_steps,
        video_codec=args.video_codec, extra_cameras=tuple(c.strip() for c in args.extra_cameras.split(",") if c.strip())))
    print(json.dumps({"out": str(report.out), "kept": report.kept, "attempted": report.attempted,
                      "frames": report.num_frames}, indent=2))
    return 0


@dataclass
class DemoPaths:
    workdir: Path

    @property
    def data(self) -> Path:
        return self.workdir / "data"

    @property
    def mllm(self) -> Path:
        return self.workdir / "models" / "tiny_internvl"

    @property
    def expert(self) -> Path:
        return self.workdir / "models" / "tiny_qwen3"

    @property
    def dataset_yaml(self) -> Path:
        return self.workdir / "dataset.yaml"

    @property
    def train(self) -> Path:
        return self.workdir / "train"

    @property
    def eval(self) -> Path:
        return self.workdir / "eval"


def check_reused_demos(data: Path, recipe: DemoRecipe, tasks: list[str]) -> None:
    """An existing data/ folder must match the recipe, or training would silently use other demos."""
    from beingh.data.lerobot import LeRobotDataset
    from beingh.eval.collect import CAMERA_COLUMN
    from beingh.eval.metaworld_env import task_description
    from beingh.eval.rollout import metaworld_data_config

    dataset = LeRobotDataset(data)
    size = dataset.features[CAMERA_COLUMN]["shape"][0]
    texts = set(dataset.tasks.values())
    wanted = {task_description(t) for t in tasks}
    missing = sorted(set(metaworld_data_config(recipe.data_config).VIDEO_SOURCE_COLUMNS.values())
                     - set(dataset.features))
    if size != recipe.image_size or texts != wanted or missing:
        raise SystemExit(f"beingh demo run: existing demos in {data} ({size} px, tasks {sorted(texts)}, missing "
                         f"camera columns {missing}) do not match --image_size {recipe.image_size} --tasks "
                         f"{recipe.tasks} --data_config {recipe.data_config}; use a new --workdir")


def write_tiny_model_folders(recipe: DemoRecipe, paths: DemoPaths) -> None:
    """Random-weight InternVL/Qwen3 folders (real formats) sized by the recipe, plus a tiny tokenizer."""
    from beingh.data.tokenizer import build_tiny_tokenizer
    from beingh.model.tiny import tiny_config, write_internvl_folder, write_qwen3_folder

    config = tiny_config(
        llm={"hidden_size": recipe.llm_hidden, "intermediate_size": 2 * recipe.llm_hidden,
             "num_hidden_layers": recipe.llm_layers},
        expert={"hidden_size": recipe.expert_hidden, "intermediate_size": 2 * recipe.expert_hidden,
                "num_hidden_layers": recipe.llm_layers},
        vit={"hidden_size": recipe.vit_hidden, "intermediate_size": 2 * recipe.vit_hidden},
        force_image_size=recipe.image_size,
    )
    write_internvl_folder(paths.mllm, config, image_size=recipe.image_size, seed=recipe.seed)
    build_tiny_tokenizer(paths.mllm)
    write_qwen3_folder(paths.expert, config, seed=recipe.seed + 1)


def write_dataset_yaml(recipe: DemoRecipe, paths: DemoPaths) -> None:
    import yaml

    paths.dataset_yaml.write_text(yaml.safe_dump({GROUP_NAME: {
        "dataset_names": [str(paths.data.resolve())],
        "data_config_names": recipe.data_config,
        "embodiment_tags": "metaworld",
        "sampling_strategy": "step",
        "weight": 1.0,
    }}, sort_keys=False))


def train_command(recipe: DemoRecipe, paths: DemoPaths) -> list[str]:
    args = {
        "dataset_config_file": paths.dataset_yaml, "output_dir": paths.train, "mllm_path": paths.mllm,
        "expert_path": paths.expert, "max_steps": recipe.steps, "learning_rate": recipe.learning_rate,
        "warmup_ratio": recipe.warmup_ratio, "save_steps": recipe.steps, "save_steps_start": 0,
        "logging_steps": max(1, recipe.steps // 50), "force_image_size": recipe.image_size,
        "max_num_tokens": recipe.max_num_tokens, "max_num_tokens_per_sample": recipe.max_num_tokens,
        "expected_num_tokens": recipe.max_num_tokens,
        "prefer_buffer_before": recipe.max_num_tokens // 2,
        "num_inference_timesteps": recipe.num_inference_timesteps, "prompt_template": recipe.prompt_template,
        "use_mpg": recipe.use_mpg,
        "num_workers": recipe.num_workers, "prefetch_factor": 2, "seed": recipe.seed, "weight_decay": 0.0,
    }
    command = [sys.executable, "-m", "beingh.train"]
    for key, value in args.items():
        command += [f"--{key}", str(value)]
    return command


def latest_checkpoint(train_dir: Path) -> Path:
    steps = sorted((p for p in train_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    if not steps:
        raise FileNotFoundError(f"no checkpoint folder <step>/ in {train_dir}")
    return steps[-1]


def held_out_chunk_plot(policy, recipe: DemoRecipe, out: Path) -> Path:
    """Policy chunk vs the expert's next actions on a frame of an expert episode with an unseen seed."""
    from beingh.eval.metaworld_env import EVAL_SEED_START, MetaWorldEnv, ScriptedExpert, parse_tasks
    from beingh.eval.plots import plot_action_chunk
    from beingh.eval.rollout import (
        data_config_cameras,
        metaworld_action_chunk,
        metaworld_data_config,
        metaworld_observation,
    )

    task = parse_tasks(recipe.tasks)[-1]
    seed = EVAL_SEED_START - 1  # never a training seed (collection stops far below) nor an evaluation seed
    data_config = metaworld_data_config(recipe.data_config)
    env = MetaWorldEnv(task, recipe.image_size, max_episode_steps=recipe.max_steps,
                       extra_cameras=data_config_cameras(data_config))
    expert = ScriptedExpert(task)
    observation, query_step = env.reset(seed), 10
    for _ in range(query_step):
        observation, _, _ = env.step(expert(observation))
    policy.reset()
    predicted = metaworld_action_chunk(
        policy.get_action(metaworld_observation(observation, env.instruction, data_config)), data_config)
    expert_actions = []
    for _ in range(len(predicted)):
        action = expert(observation)
        expert_actions.append(action)
        observation, _, done = env.step(action)
        if done:
            break
    env.close()
    return plot_action_chunk(predicted, np.stack(expert_actions), out,
                             f"{task}, held-out seed {seed}, frame {query_step}")


def run_main(argv: list[str]) -> int:
    import torch

    from beingh.eval.collect import CollectConfig, collect_demos
    from beingh.eval.metaworld_env import parse_tasks
    from beingh.eval.policy_loader import PolicySpec, open_policy
    from beingh.eval.rollout import RolloutConfig, data_config_cameras, evaluate, metaworld_data_config

    parser = argparse.ArgumentParser(prog="beingh demo run", description=__doc__)
    parser.add_argument("--workdir", type=Path, default=Path("beingh_demo"))
    _add_recipe_args(parser)
    args = parser.parse_args(argv)
    recipe = DemoRecipe(**{k: getattr(args, k) for k in asdict(DemoRecipe())})
    tasks = parse_tasks(recipe.tasks)
    paths = DemoPaths(args.workdir)
    paths.workdir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    start = time.perf_counter()

    if paths.train.exists():
        raise SystemExit(f"beingh demo run: {paths.train} already holds a training run; use a new --workdir "
                         "(the demos in it can be reused: copy its data/ folder)")
    if paths.data.exists():
        check_reused_demos(paths.data, recipe, tasks)
        logger.info("reusing demos in %s", paths.data)
    else:
        collect_demos(CollectConfig(
            tasks=tasks, episodes=recipe.episodes, out=paths.data, image_size=recipe.image_size, seed=recipe.seed,
            extra_cameras=data_config_cameras(metaworld_data_config(recipe.data_config))))
    timings["collect_s"] = time.perf_counter() - start

    t0 = time.perf_counter()
    write_tiny_model_folders(recipe, paths)
    write_dataset_yaml(recipe, paths)
    command = train_command(recipe, paths)
    logger.info("training: %s", " ".join(command))
    env = {**os.environ, "OMP_NUM_THREADS": str(recipe.torch_threads),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(PACKAGE_ROOT),
                                                                      os.environ.get("PYTHONPATH")]))}
    subprocess.run(command, check=True, env=env)
    checkpoint = latest_checkpoint(paths.train)
    timings["train_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    torch.set_num_threads(recipe.torch_threads)
    policy = open_policy(PolicySpec(policy=str(checkpoint), data_config_name=recipe.data_config,
                                    embodiment_tag="metaworld", dataset_name=GROUP_NAME, device="cpu",
                                    instruction_template=recipe.prompt_template))
    config = RolloutConfig(execute_steps=recipe.execute_steps, max_steps=recipe.max_steps,
                           image_size=recipe.image_size, data_config_name=recipe.data_config)
    results = evaluate(policy, tasks, recipe.eval_episodes, config, video_dir=paths.eval / "videos")
    chunk_plot = held_out_chunk_plot(policy, recipe, paths.eval / "action_chunk.png")
    timings["eval_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - start

    results.update({"recipe": asdict(recipe), "checkpoint": str(checkpoint), "timings": timings,
                    "loss_curve": str(paths.train / "loss_curve.png"), "action_chunk_plot": str(chunk_plot),
                    "videos": str(paths.eval / "videos"), "torch_threads": _torch_threads()})
    (paths.eval / "results.json").write_text(json.dumps(results, indent=2))
    print("\n== beingh demo run ==")
    for task, r in results["tasks"].items():
        print(f"  {task:<16} success {r['successes']}/{r['episodes']} ({100 * r['success_rate']:.0f}%)")
    print(f"  overall          {100 * results['overall_success_rate']:.0f}%")
    print(f"  time: collect {timings['collect_s']:.0f}s, train {timings['train_s']:.0f}s, "
          f"eval {timings['eval_s']:.0f}s, total {timings['total_s'] / 60:.1f} min")
    print(f"  checkpoint:   {checkpoint}")
    print(f"  loss curve:   {results['loss_curve']}")
    print(f"  chunk plot:   {chunk_plot}")
    print(f"  videos:       {results['videos']}")
    print(f"  results:      {paths.eval / 'results.json'}")
    return 0


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    commands: dict[str, Any] = {"collect": collect_main, "run": run_main}
    usage = ("usage: beingh demo {collect|run} [--help]\n\n  collect  scripted-expert demos into a LeRobot "
             "dataset\n  run      collect, train, evaluate: the end-to-end CPU demo")
    if argv and argv[0] in ("-h", "--help"):
        print(usage)
        return 0
    if not argv or argv[0] not in commands:
        print(usage, file=sys.stderr)
        return 2
    return int(commands[argv[0]](argv[1:]) or 0)
