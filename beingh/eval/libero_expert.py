"""A privileged scripted pick-and-place expert for libero_spatial ("pick up the black bowl ... place it on the
plate").

It reads the bowl's and the plate's world bounding boxes from the simulator's collision geoms, straddles the
bowl's rim with the fingers (the Panda's fingers close along world y in LIBERO's start pose), lifts, carries
the bowl centre over the plate centre, lowers, opens and retreats. Actions are OSC_POSE position deltas with
rotation 0, gripper -1 open / +1 close (the env's convention). Other suites need their own scripts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

POSITION_GAIN = 10.0  # action = gain x position error (m), clipped to [-1, 1]; 1 = 5 cm per step (OSC_POSE)
RIM_INSET = 0.012  # finger centre this far inside the bowl's outer edge: on the rim wall
GRASP_DEPTH = 0.03  # finger centre below the rim top
APPROACH_HEIGHT = 0.10
CARRY_HEIGHT = 0.12
PLACE_CLEARANCE = 0.01  # bowl bottom above the plate top when released
CLOSE_STEPS = 12
OPEN_STEPS = 8
WAYPOINT_TIMEOUT = 60  # steps before moving on from a waypoint that is not reached
OPEN, CLOSE = -1.0, 1.0


@dataclass
class Box:
    low: np.ndarray
    high: np.ndarray

    @property
    def center(self) -> np.ndarray:
        return (self.low + self.high) / 2


def collision_box(sim, root_body: str) -> Box:
    """World axis-aligned bounding box of the collision geoms (boxes) of `root_body` and its children."""
    model, data = sim.model, sim.data
    body = model.body_name2id(root_body)
    low, high = np.full(3, np.inf), np.full(3, -np.inf)
    for geom in range(model.ngeom):
        owner = model.geom_bodyid[geom]
        while owner not in (0, body):
            owner = model.body_parentid[owner]
        if owner != body or model.geom_contype[geom] == 0:
            continue
        half = np.abs(data.geom_xmat[geom].reshape(3, 3)) @ model.geom_size[geom]
        low = np.minimum(low, data.geom_xpos[geom] - half)
        high = np.maximum(high, data.geom_xpos[geom] + half)
    if not np.isfinite(low).all():
        raise ValueError(f"body {root_body!r} has no collision geoms")
    return Box(low, high)


class BowlOnPlateExpert:
    """Waypoint script; call `plan(env)` after the settle steps, then `act(obs)` once per step."""

    def __init__(self, side: float = 1.0):
        self.side = side  # grasp the rim at +y (1) or -y (-1) of the bowl centre
        self.waypoints: list[tuple[np.ndarray | None, float, float]] = []
        self.index, self.steps, self.hold = 0, 0, None

    def plan(self, env) -> None:
        """Waypoints (target eef position or None = hold, gripper, tolerance m or hold steps) from the layout."""
        bowl_name, plate_name = env.objects_of_interest[:2]
        bowl = collision_box(env.sim, env.env.env.objects_dict[bowl_name].root_body)
        plate = collision_box(env.sim, env.env.env.objects_dict[plate_name].root_body)
        radius = (bowl.high[1] - bowl.low[1]) / 2
        grasp = np.array([bowl.center[0], bowl.center[1] + self.side * (radius - RIM_INSET),
                          bowl.high[2] - GRASP_DEPTH])
        over_plate = np.array([plate.center[0], plate.center[1], 0.0]) + (grasp - bowl.center) * [1, 1, 0]
        up = np.array([0.0, 0.0, 1.0])
        self.waypoints = [
            (grasp + APPROACH_HEIGHT * up, OPEN, 0.01),
            (grasp, OPEN, 0.006),
            (None, CLOSE, CLOSE_STEPS),
            (grasp + CARRY_HEIGHT * up, CLOSE, 0.02),
            (over_plate + (grasp[2] + CARRY_HEIGHT) * up, CLOSE, 0.01),
            (over_plate + (plate.high[2] + grasp[2] - bowl.low[2] + PLACE_CLEARANCE) * up, CLOSE, 0.008),
            (None, OPEN, OPEN_STEPS),
        ]
        self.index, self.steps, self.hold = 0, 0, None

    def act(self, observation: dict) -> np.ndarray:
        """7-dim env action for this step."""
        if not self.waypoints:
            raise RuntimeError("BowlOnPlateExpert.act before plan(env)")
        position = np.asarray(observation["robot0_eef_pos"], dtype=np.float64)
        self.steps += 1
        if self.index >= len(self.waypoints):  # released (the last waypoint holds): retreat upwards, open
            target, gripper = self.hold + [0.0, 0.0, APPROACH_HEIGHT], OPEN
        else:
            target, gripper, tolerance = self.waypoints[self.index]
            if target is None:  # hold still while the gripper moves
                if self.steps == 1:
                    self.hold = position.copy()
                target = self.hold
                reached = self.steps >= tolerance
            else:
                reached = np.linalg.norm(target - position) < tolerance or self.steps > WAYPOINT_TIMEOUT
            if reached:
                self.index, self.steps = self.index + 1, 0
        delta = np.clip(POSITION_GAIN * (target - position), -1.0, 1.0)
        return np.concatenate([delta, np.zeros(3), [gripper]])
