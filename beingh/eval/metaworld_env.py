"""MetaWorld v3 environment wrapper: deterministic per-seed resets, fast software rendering, upright images.

Why a wrapper instead of `gym.make("Meta-World/MT1")`: that stack picks one of 50 pre-generated goal layouts at
random on every reset, so `reset(seed=s)` is not reproducible. Here `reset(seed)` seeds the env's own RNG and
draws a fresh object/goal layout from it, so a seed names exactly one layout; training and evaluation seeds
are disjoint ranges (see `TRAIN_SEED_START` / `EVAL_SEED_START`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402

# Demo episodes use seeds TRAIN_SEED_START + i; evaluation episodes EVAL_SEED_START + i. Collection refuses
# seeds at or above EVAL_SEED_START so a trained policy is never evaluated on a layout it saw.
TRAIN_SEED_START = 0
EVAL_SEED_START = 10_000

TASK_DESCRIPTIONS: dict[str, str] = {
    "reach-v3": "reach the target",
    "push-v3": "push the puck to the goal",
    "pick-place-v3": "pick up the puck and place it at the goal",
    "drawer-open-v3": "open the drawer",
    "drawer-close-v3": "close the drawer",
    "button-press-v3": "press the button",
    "button-press-topdown-v3": "press the button from the top",
    "door-open-v3": "open the door",
    "window-open-v3": "open the window",
    "window-close-v3": "close the window",
    "faucet-open-v3": "turn the faucet on",
    "assembly-v3": "put the ring on the peg",
    "peg-insert-side-v3": "insert the peg into the hole from the side",
}
# corner2 moved closer to the table as LeRobot's MetaWorld wrapper does, and narrowed from 60 to 45 degrees
# so the workspace fills the frame: the reach goal and the puck are then several pixels wide at 112 px.
# topview (looking straight down) is lowered and narrowed over the workspace, so the goal's x, y become image
# coordinates; a second view that, with corner2, fixes the reach goal's height too.
CAMERA_POSITIONS: dict[str, tuple[float, float, float]] = {"corner2": (0.75, 0.075, 0.7), "topview": (0.0, 0.7, 1.0)}
CAMERA_FOVY: dict[str, float] = {"corner2": 45.0, "topview": 35.0}
# The goal marker (a visual-only site: it never collides and does not enter the success test) is drawn as a
# bright-green 3.5 cm sphere instead of a 2 cm one whose colour may match the red robot, so that a policy
# looking through a small camera image can find it.
GOAL_SITE = "goal"
GOAL_MARKER_RADIUS = 0.035
GOAL_MARKER_RGBA = (0.0, 1.0, 0.0, 1.0)
STATE_DIM = 4  # hand xyz + gripper opening: obs[0:4]
ACTION_DIM = 4  # dx, dy, dz, gripper effort in [-1, 1]


@dataclass
class MetaWorldObservation:
    image: np.ndarray  # (H, W, 3) uint8, upright
    state: np.ndarray  # (4,) float32: hand x, y, z, gripper opening
    raw: np.ndarray  # full 39-dim MetaWorld observation (for the scripted expert)
    extra_images: dict[str, np.ndarray] = field(default_factory=dict)  # camera name -> (H, W, 3) uint8

    @property
    def environment_state(self) -> np.ndarray:
        """(6,) float32 [object xyz, goal xyz]: privileged, only the `metaworld_goal` config feeds it."""
        return np.concatenate([self.raw[4:7], self.raw[36:39]]).astype(np.float32)


def task_description(task: str) -> str:
    if task not in TASK_DESCRIPTIONS:
        raise ValueError(f"MetaWorld task {task!r} has no instruction text; known: {sorted(TASK_DESCRIPTIONS)}")
    return TASK_DESCRIPTIONS[task]


def parse_tasks(spec: str) -> list[str]:
    """'reach-v3,push-v3' -> ['reach-v3', 'push-v3'], validated against MetaWorld and our instruction table."""
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    tasks = [t.strip() for t in spec.split(",") if t.strip()]
    if not tasks:
        raise ValueError("--tasks: expected a comma-separated list such as reach-v3,push-v3")
    for task in tasks:
        if task not in ALL_V3_ENVIRONMENTS:
            raise ValueError(f"--tasks: unknown MetaWorld task {task!r}")
        task_description(task)
    return tasks


class MetaWorldEnv:
    """One MetaWorld task with an offscreen camera (plus `extra_cameras`, rendered into
    `MetaWorldObservation.extra_images`). Actions are clipped to [-1, 1] before stepping."""

    def __init__(self, task: str, image_size: int = 224, camera: str = "corner2", max_episode_steps: int = 500,
                 extra_cameras: tuple[str, ...] = ()):
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS

        if task not in ALL_V3_ENVIRONMENTS:
            raise ValueError(f"unknown MetaWorld task {task!r}")
        self.task = task
        self.instruction = task_description(task)
        self.image_size = image_size
        self.camera = camera
        self.max_episode_steps = max_episode_steps
        self.extra_cameras = tuple(extra_cameras)
        env = ALL_V3_ENVIRONMENTS[task](render_mode="rgb_array", camera_name=camera, width=image_size,
                                       height=image_size)
        env._partially_observable = False  # goal position in obs[36:39], needed by the scripted experts
        env.__dict__.pop("sawyer_observation_space", None)  # cached bounds would clip the goal to 0
        env._set_task_called = True
        env._freeze_rand_vec = False
        env.seeded_rand_vec = True
        env.max_path_length = max_episode_steps
        for name in (camera, *self.extra_cameras):
            self.place_camera(env.model, name)
        self.fast_render_flags(env.model)
        self.enlarge_goal_marker(env.model)
        self.env = env
        self.steps = 0

    @staticmethod
    def place_camera(model, name: str) -> None:
        try:
            camera_id = model.camera(name).id
        except KeyError as error:
            raise ValueError(f"MetaWorld has no camera {name!r}; known: "
                             f"{[model.camera(i).name for i in range(model.ncam)]}") from error
        if name in CAMERA_POSITIONS:
            model.cam_pos[camera_id] = CAMERA_POSITIONS[name]
        if name in CAMERA_FOVY:
            model.cam_fovy[camera_id] = CAMERA_FOVY[name]

    @staticmethod
    def fast_render_flags(model) -> None:
        """No MSAA, shadows or reflections: ~8x faster on llvmpipe; must run before the first render."""
        model.vis.quality.offsamples = 0
        model.light_castshadow[:] = 0
        model.mat_reflectance[:] = 0

    @staticmethod
    def enlarge_goal_marker(model) -> None:
        import mujoco

        site_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, GOAL_SITE)
        if site_id >= 0:
            model.site_size[site_id, 0] = GOAL_MARKER_RADIUS
            model.site_rgba[site_id] = GOAL_MARKER_RGBA

    def render(self, camera: str | None = None) -> np.ndarray:
        """Upright RGB frame of `camera` (default: the main one): MetaWorld cameras render rotated 180 degrees."""
        renderer = self.env.mujoco_renderer
        main_id = renderer.camera_id
        if camera is not None and camera != self.camera:
            renderer.camera_id = self.env.model.camera(camera).id
        try:
            image = self.env.render()
        finally:
            renderer.camera_id = main_id
        return np.ascontiguousarray(image[::-1, ::-1])

    def _observation(self, raw: np.ndarray) -> MetaWorldObservation:
        return MetaWorldObservation(image=self.render(), state=raw[:STATE_DIM].astype(np.float32), raw=raw,
                                    extra_images={name: self.render(name) for name in self.extra_cameras})

    def reset(self, seed: int) -> MetaWorldObservation:
        self.env.seed(int(seed))
        raw, _ = self.env.reset()
        self.steps = 0
        return self._observation(raw)

    def step(self, action: np.ndarray) -> tuple[MetaWorldObservation, bool, bool]:
        """Returns (observation, success, done); done on success or after max_episode_steps."""
        action = np.clip(np.asarray(action, dtype=np.float64).reshape(ACTION_DIM), -1.0, 1.0)
        raw, _, _, _, info = self.env.step(action)
        self.steps += 1
        success = bool(info["success"])
        return self._observation(raw), success, success or self.steps >= self.max_episode_steps

    def close(self) -> None:
        self.env.close()


class ScriptedExpert:
    """MetaWorld's hand-written policy for a task, with actions clipped to the env's [-1, 1] range."""

    def __init__(self, task: str):
        from metaworld.policies import ENV_POLICY_MAP

        if task not in ENV_POLICY_MAP:
            raise ValueError(f"MetaWorld task {task!r} has no scripted expert")
        self.policy = ENV_POLICY_MAP[task]()

    def __call__(self, observation: MetaWorldObservation) -> np.ndarray:
        return np.clip(self.policy.get_action(observation.raw), -1.0, 1.0).astype(np.float32)
