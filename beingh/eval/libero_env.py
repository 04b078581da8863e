"""LIBERO tasks and environments for the client and the demo collector (torch-free: runs in the LIBERO venv).

LIBERO lives in its own virtual environment (`scripts/eval/setup_libero.sh`), because its pins (numpy 1.26,
robosuite 1.4, mujoco 2.3.7) conflict with beingh's; it talks to `beingh serve` over websockets.

Rendering two cameras costs far more than a physics step on a CPU (~0.1-0.4 s per camera with EGL software
rendering, against ~20 ms per step), so `LiberoEnv` renders only on the steps whose observation is used
(the last step before each policy query; every step when recording). It does so by switching each camera
sensor between rendering and a blank image, which keeps robosuite's sampling schedule unchanged: a
rendered observation is bit-identical to the one an always-rendering `OffScreenRenderEnv` gives at that
step (tested in tests/test_eval_libero_sim.py).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SETUP_HINT = ("LIBERO is not importable here: run `bash scripts/eval/setup_libero.sh` and use its venv "
              "(`.venv-libero/bin/beingh ...`)")
CONFIG_DIRNAME = "libero-config"
"""Folder inside the LIBERO venv holding LIBERO's config.yaml (written by setup_libero.sh)."""
SUITE_MAX_STEPS = {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520,
                   "libero_90": 400}
NUM_WAIT_STEPS = 10
"""No-op steps after each reset while the objects fall onto the table (the original's evaluation waits too)."""
WAIT_ACTION = np.array([0, 0, 0, 0, 0, 0, -1], dtype=np.float64)
CAMERAS = ("agentview", "robot0_eye_in_hand")
FPS = 20
"""LIBERO's control frequency (`control_freq=20`): one dataset frame per env step."""


def suite_name(name: str) -> str:
    """'spatial' or 'libero_spatial' -> 'libero_spatial' (validated)."""
    full = name if name.startswith("libero_") else f"libero_{name}"
    if full not in SUITE_MAX_STEPS:
        raise ValueError(f"--suite {name!r}: expected one of {sorted(SUITE_MAX_STEPS)} (or without 'libero_')")
    return full


def parse_task_ids(text: str | None, num_tasks: int) -> list[int]:
    """'0,1,3' -> [0, 1, 3]; None -> every task of the suite."""
    if text is None:
        return list(range(num_tasks))
    try:
        ids = [int(t) for t in text.split(",") if t.strip()]
    except ValueError as err:
        raise ValueError(f"--tasks {text!r}: expected comma-separated task ids, e.g. 0,1,2") from err
    bad = [i for i in ids if not 0 <= i < num_tasks]
    if not ids or bad:
        raise ValueError(f"--tasks {text!r}: task ids must be in [0, {num_tasks})")
    return ids


def import_libero() -> Any:
    """`libero.libero` with rendering and config set up so that importing it never prompts."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
    os.environ.setdefault("LIBERO_CONFIG_PATH", str(Path(sys.prefix) / CONFIG_DIRNAME))
    try:
        import libero.libero
        from libero.libero import benchmark  # noqa: F401  (registers the suites)
        from libero.libero.envs import OffScreenRenderEnv  # noqa: F401
    except ImportError as err:
        raise SystemExit(f"{SETUP_HINT} ({err})") from err
    return libero.libero


@dataclass
class LiberoTask:
    suite: str
    task_id: int
    name: str
    language: str
    bddl_file: str
    init_states: np.ndarray
    """The suite's fixed initial states (evaluation trial i starts from row i); demos never use them."""


def load_task(suite: str, task_id: int) -> LiberoTask:
    libero = import_libero()
    from libero.libero import benchmark

    task_suite = benchmark.get_benchmark_dict()[suite_name(suite)]()
    if not 0 <= task_id < task_suite.n_tasks:
        raise ValueError(f"{suite}: task id {task_id} out of range [0, {task_suite.n_tasks})")
    task = task_suite.get_task(task_id)
    bddl = os.path.join(libero.get_libero_path("bddl_files"), task.problem_folder, task.bddl_file)
    return LiberoTask(suite_name(suite), task_id, task.name, task.language, bddl,
                      np.asarray(task_suite.get_task_init_states(task_id)))


def num_tasks(suite: str) -> int:
    import_libero()
    from libero.libero import benchmark

    return benchmark.get_benchmark_dict()[suite_name(suite)]().n_tasks


class LiberoEnv:
    """One task's `OffScreenRenderEnv` (agent-view and wrist cameras, `resolution` px) rendering on demand."""

    def __init__(self, task: LiberoTask, resolution: int):
        import_libero()
        from libero.libero.envs import OffScreenRenderEnv

        self.task = task
        # Hard resets (the default) rebuild the simulation on every reset, so a replay from the same initial
        # state repeats a rollout exactly; soft resets keep solver warm-starts and made replays diverge.
        self.env = OffScreenRenderEnv(bddl_file_name=task.bddl_file, camera_heights=resolution,
                                      camera_widths=resolution)
        self.resolution = resolution
        self._render = True

    @property
    def objects_of_interest(self) -> list[str]:
        """The task's objects (libero_spatial: [bowl, plate]); their `<name>_pos` are in every observation."""
        return list(self.env.obj_of_interest)

    @property
    def sim(self) -> Any:
        return self.env.sim

    def sample_init_state(self, seed: int) -> np.ndarray:
        """A fresh layout from the task's placement distribution (a new state, not one of the suite's)."""
        self.env.seed(seed)
        self.env.reset()
        return np.asarray(self.env.get_sim_state(), dtype=np.float64)

    def reset(self, init_state: np.ndarray, seed: int | None = None, render: bool = True) -> dict[str, Any]:
        """The original's episode start: reset, `set_init_state`, NUM_WAIT_STEPS no-ops. Returns the last obs
        (with camera images when `render`)."""
        if seed is not None:
            self.env.seed(seed)
        self.env.reset()  # before set_init_state: otherwise the 1000-step horizon carries over
        self._switch_cameras()
        self._render = False
        self.env.set_init_state(init_state)
        observation = None
        for step in range(NUM_WAIT_STEPS):
            observation = self.step(WAIT_ACTION, render=render and step == NUM_WAIT_STEPS - 1)[0]
        return observation

    def step(self, action: np.ndarray, render: bool = True) -> tuple[dict[str, Any], float, bool, dict]:
        """`env.step`; the observation holds camera images only when `render` (done = the task succeeded)."""
        self._render = render
        observation, reward, done, info = self.env.step(np.asarray(action, dtype=np.float64))
        if not render:
            observation = {k: v for k, v in observation.items() if not k.endswith("_image")}
        return observation, reward, bool(done), info

    def check_success(self) -> bool:
        return bool(self.env.check_success())

    def close(self) -> None:
        self.env.close()

    def _switch_cameras(self) -> None:
        """Wrap each camera sensor (robosuite rebuilds them on every hard reset) to render only when asked."""
        inner = self.env.env
        for camera in CAMERAS:
            name = f"{camera}_image"
            original = inner._observables[name]._sensor
            blank = np.zeros((self.resolution, self.resolution, 3), dtype=np.uint8)

            def switched(obs_cache, original=original, blank=blank):
                return original(obs_cache) if self._render else blank

            switched.__modality__ = original.__modality__
            self._render = False
            inner.modify_observable(name, "sensor", switched)
