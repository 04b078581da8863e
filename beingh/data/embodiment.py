"""Embodiment data configs: how one robot's LeRobot columns map to logical modalities and unified slots.

A DataConfig class (reference/guide_data_configuration.md) names the camera views, cuts state/action
modalities out of raw columns (`ModalityDef`), maps each to a slot of the 200-dim unified space, and picks
a normalization mode per key. Configs live in one registry, `DATA_CONFIG_MAP`. Users add robots without
editing this package: set `BEINGH_DATA_CONFIGS` to an `os.pathsep`-separated list of Python files or
module names (which call `register_data_config`) and/or YAML files (see `load_data_config_file`); they
are loaded on the first registry lookup.

Embodiment ids are looked up by tag *string* (the reference passed the Enum and always got 31).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import yaml

from beingh.data.normalize import check_mode
from beingh.data.rotation import ROTATION_DIMS
from beingh.data.unified import modality_group, validate_unified_mapping

logger = logging.getLogger(__name__)

TARGET_ROTATION_TYPE = "axis_angle"
"""Rotations enter the unified space as axis-angle (3 dims), whatever the dataset stores."""

EMBODIMENT_TAGS: dict[str, int] = {
    "libero_franka_gripper": 0,
    "libero": 0,
    "robocasa": 1,
    "metaworld": 2,
    "new_embodiment": 31,
}
"""Tag -> embodiment id (ids index a 32-way table). Unknown tags get the `new_embodiment` id: a new robot
is by definition one the model has no dedicated id for. Register more with `register_embodiment_tag`."""

NEW_EMBODIMENT = "new_embodiment"
CONFIGS_ENV = "BEINGH_DATA_CONFIGS"


def register_embodiment_tag(tag: str, embodiment_id: int) -> None:
    if not 0 <= embodiment_id < 32:
        raise ValueError(f"embodiment id for {tag!r} must be in [0, 32), got {embodiment_id}")
    EMBODIMENT_TAGS[tag] = embodiment_id


def embodiment_id(tag: str) -> int:
    """Id of an embodiment tag; unknown tags map to the `new_embodiment` id (31) with a warning."""
    tag = str(getattr(tag, "value", tag))
    if tag not in EMBODIMENT_TAGS:
        logger.warning("unknown embodiment tag %r: using the %r id %d", tag, NEW_EMBODIMENT,
                       EMBODIMENT_TAGS[NEW_EMBODIMENT])
        return EMBODIMENT_TAGS[NEW_EMBODIMENT]
    return EMBODIMENT_TAGS[tag]


@dataclass(frozen=True)
class ModalityDef:
    """One logical modality cut from a raw column: `column[..., start:end]`.

    `absolute=False` marks a delta: chunk steps past the episode end are zero-filled instead of
    repeating the last row. `continuous=False` allows only `binary`/`none` normalization.
    """

    source_column: str
    start: int = 0
    end: int = 0
    absolute: bool = True
    rotation_type: str | None = None
    continuous: bool = True

    def __post_init__(self) -> None:
        if self.end < self.start or self.start < 0:
            raise ValueError(f"ModalityDef({self.source_column!r}): need 0 <= start <= end, "
                             f"got [{self.start}:{self.end}]")
        if self.rotation_type is not None and self.rotation_type not in ROTATION_DIMS:
            raise ValueError(f"ModalityDef({self.source_column!r}): unknown rotation_type "
                             f"{self.rotation_type!r}; known: {sorted(ROTATION_DIMS)}")

    @property
    def width(self) -> int:
        """Number of raw values."""
        return self.end - self.start

    @property
    def unified_width(self) -> int:
        """Number of values after rotation conversion (what occupies the unified slot)."""
        return ROTATION_DIMS[TARGET_ROTATION_TYPE] if self.converts_rotation else self.width

    @property
    def converts_rotation(self) -> bool:
        return self.rotation_type is not None and self.rotation_type != TARGET_ROTATION_TYPE


class BaseDataConfig:
    """Subclass per embodiment; set the class attributes and either `MODALITIES` or `define_modalities`.

    `ACTION_RELATIVE_TO_STATE` ({action key: state key}) marks actions stored as absolute targets that
    the model should see relative to the current state (a_t+k - s_t for every chunk step); inference adds
    the state back. Such keys must be stored absolute, be rotation-free and as wide as the state key, and
    use normalization `none` (column statistics describe the absolute values, not the differences).
    """

    VIDEO_KEYS: ClassVar[list[str]] = []
    VIDEO_SOURCE_COLUMNS: ClassVar[dict[str, str]] = {}
    STATE_KEYS: ClassVar[list[str]] = []
    ACTION_KEYS: ClassVar[list[str]] = []
    LANGUAGE_KEYS: ClassVar[list[str]] = ["language.instruction"]
    UNIFIED_MAPPING: ClassVar[dict[str, tuple[int, int]]] = {}
    MODALITIES: ClassVar[dict[str, ModalityDef]] = {}
    ACTION_RELATIVE_TO_STATE: ClassVar[dict[str, str]] = {}
    state_normalization_modes: ClassVar[dict[str, str]] = {}
    action_normalization_modes: ClassVar[dict[str, str]] = {}

    def __init__(self, embodiment_tag: str = NEW_EMBODIMENT, use_fixed_view: bool = False,
                 max_view_num: int = -1):
        self.embodiment_tag = str(getattr(embodiment_tag, "value", embodiment_tag))
        self.use_fixed_view = use_fixed_view
        if max_view_num == 0 or max_view_num < -1:
            raise ValueError(f"max_view_num must be -1 (all views) or >= 1, got {max_view_num}")
        self.max_view_num = max_view_num
        self.modalities = self.define_modalities()
        self.validate()

    def define_modalities(self) -> dict[str, ModalityDef]:
        """Logical key -> ModalityDef for every state, action and language key."""
        return dict(self.MODALITIES)

    def __reduce_ex__(self, protocol):
        # DataLoader workers started with spawn/forkserver unpickle configs in a fresh process. Classes
        # built from YAML are rebuilt from their spec; classes from a .py file given by path (not
        # importable there) are looked up in the registry, which reloads $BEINGH_DATA_CONFIGS.
        cls = type(self)
        spec = cls.__dict__.get("_SPEC")
        if spec is not None:
            return _instance_from_spec, spec, self.__dict__
        name = self.registered_name
        if _importable(cls) or name is None:
            return super().__reduce_ex__(protocol)
        return _instance_from_registry, (name,), self.__dict__

    @property
    def name(self) -> str:
        return type(self).__name__

    @property
    def registered_name(self) -> str | None:
        """The name this config's class is registered under (None when unregistered)."""
        return next((n for n, c in DATA_CONFIG_MAP.items() if c is type(self)), None)

    def modality(self, key: str) -> ModalityDef:
        if key not in self.modalities:
            raise KeyError(f"{self.name}: no modality {key!r}; defined: {sorted(self.modalities)}")
        return self.modalities[key]

    def normalization_mode(self, key: str) -> str:
        modes = self.state_normalization_modes if modality_group(key) == "state" else self.action_normalization_modes
        return modes.get(key, "none")

    def source_columns(self) -> list[str]:
        """Raw numeric columns the state and action keys read (statistics are computed for these)."""
        keys = self.STATE_KEYS + self.ACTION_KEYS
        return list(dict.fromkeys(self.modalities[k].source_column for k in keys))

    def select_views(self, rng: np.random.Generator | None = None) -> list[str]:
        """Views for one sample: the first with `use_fixed_view`, all with `max_view_num == -1`, otherwise
        `min(max_view_num, n)` views drawn with `rng` (kept in VIDEO_KEYS order)."""
        views = list(self.VIDEO_KEYS)
        if self.use_fixed_view:
            return views[:1]
        if self.max_view_num == -1 or self.max_view_num >= len(views):
            return views
        if rng is None:
            raise ValueError(f"{self.name}: max_view_num={self.max_view_num} draws views at random; pass an rng")
        chosen = rng.choice(len(views), size=self.max_view_num, replace=False)
        return [views[i] for i in sorted(chosen.tolist())]

    def validate(self) -> None:
        """Check the config is self-consistent; errors name the config and the key."""
        where = self.name
        for key in self.VIDEO_KEYS:
            if key not in self.VIDEO_SOURCE_COLUMNS:
                raise ValueError(f"{where}: VIDEO_KEYS entry {key!r} has no VIDEO_SOURCE_COLUMNS entry")
        for group, keys in (("state", self.STATE_KEYS), ("action", self.ACTION_KEYS)):
            for key in keys:
                if modality_group(key) != group:
                    raise ValueError(f"{where}: {key!r} listed in {group.upper()}_KEYS must start with '{group}.'")
                if key not in self.modalities:
                    raise ValueError(f"{where}: {key!r} has no ModalityDef in define_modalities()")
                if key not in self.UNIFIED_MAPPING:
                    raise ValueError(f"{where}: {key!r} has no UNIFIED_MAPPING slot")
                self._validate_key(key)
        extra = set(self.UNIFIED_MAPPING) - set(self.STATE_KEYS) - set(self.ACTION_KEYS)
        if extra:
            raise ValueError(f"{where}: UNIFIED_MAPPING keys {sorted(extra)} are not in STATE_KEYS/ACTION_KEYS")
        validate_unified_mapping(self.UNIFIED_MAPPING, owner=f"{where}.UNIFIED_MAPPING")
        for attr, group in (("state_normalization_modes", "state"), ("action_normalization_modes", "action")):
            keys = self.STATE_KEYS if group == "state" else self.ACTION_KEYS
            for key in getattr(self, attr):
                if key not in keys:
                    raise ValueError(f"{where}.{attr}: {key!r} is not in {group.upper()}_KEYS")
        for action_key, state_key in self.ACTION_RELATIVE_TO_STATE.items():
            self._validate_relative(action_key, state_key)

    def _validate_key(self, key: str) -> None:
        where = f"{self.name}[{key!r}]"
        mod = self.modalities[key]
        if mod.width <= 0:
            raise ValueError(f"{where}: empty slice [{mod.start}:{mod.end}] of {mod.source_column!r}")
        if mod.rotation_type is not None and mod.width != ROTATION_DIMS[mod.rotation_type]:
            raise ValueError(f"{where}: rotation_type {mod.rotation_type!r} needs "
                             f"{ROTATION_DIMS[mod.rotation_type]} values, the slice has {mod.width}")
        start, end = self.UNIFIED_MAPPING[key]
        if end - start != mod.unified_width:
            raise ValueError(f"{where}: unified slot ({start}, {end}) has {end - start} dims but the modality "
                             f"gives {mod.unified_width} (after rotation conversion)")
        mode = check_mode(self.normalization_mode(key), where)
        if not mod.continuous and mode not in ("binary", "none"):
            raise ValueError(f"{where}: continuous=False allows only 'binary' or 'none', got {mode!r}")
        if mod.converts_rotation and mode not in ("min_max", "none"):
            raise ValueError(f"{where}: a converted rotation allows only 'none' or 'min_max' (fixed +-pi "
                             f"bounds), got {mode!r}")
        if mod.converts_rotation and mode == "min_max" and not mod.absolute:
            raise ValueError(f"{where}: a converted relative rotation cannot be normalized (use 'none')")

    def _validate_relative(self, action_key: str, state_key: str) -> None:
        where = f"{self.name}.ACTION_RELATIVE_TO_STATE[{action_key!r}]"
        if action_key not in self.ACTION_KEYS or state_key not in self.STATE_KEYS:
            raise ValueError(f"{where}: needs an ACTION_KEYS key and a STATE_KEYS key, got {state_key!r}")
        action, state = self.modalities[action_key], self.modalities[state_key]
        if action.rotation_type or state.rotation_type or action.width != state.width:
            raise ValueError(f"{where}: both keys must be rotation-free and of equal width")
        if not action.absolute:
            raise ValueError(f"{where}: the stored action must be absolute (absolute=True) to be made relative")
        if self.normalization_mode(action_key) != "none":
            raise ValueError(f"{where}: relative-to-state actions must use normalization 'none'")


DATA_CONFIG_MAP: dict[str, type[BaseDataConfig]] = {}
_env_loaded = False


def register_data_config(name: str, cls: type[BaseDataConfig]) -> type[BaseDataConfig]:
    """Add a config class under `name` (validated by instantiating it once); returns the class."""
    if not (isinstance(cls, type) and issubclass(cls, BaseDataConfig)):
        raise TypeError(f"register_data_config({name!r}): expected a BaseDataConfig subclass, got {cls!r}")
    cls()
    if name in DATA_CONFIG_MAP and DATA_CONFIG_MAP[name] is not cls:
        logger.warning("data config %r re-registered: %s replaces %s", name, cls.__name__,
                       DATA_CONFIG_MAP[name].__name__)
    DATA_CONFIG_MAP[name] = cls
    return cls


def get_data_config(name: str) -> type[BaseDataConfig]:
    """The config class registered as `name` (user configs from $BEINGH_DATA_CONFIGS load first)."""
    load_env_data_configs()
    if name not in DATA_CONFIG_MAP:
        raise ValueError(f"unknown data config {name!r}; known: {sorted(DATA_CONFIG_MAP)} "
                         f"(add your own via ${CONFIGS_ENV} or register_data_config)")
    return DATA_CONFIG_MAP[name]


def load_env_data_configs(force: bool = False) -> None:
    """Load every entry of $BEINGH_DATA_CONFIGS once per process (again with `force`)."""
    global _env_loaded
    if _env_loaded and not force:
        return
    _env_loaded = True
    for entry in filter(None, os.environ.get(CONFIGS_ENV, "").split(os.pathsep)):
        try:
            load_data_config_file(entry)
        except Exception as err:
            raise ValueError(f"${CONFIGS_ENV} entry {entry!r}: {err}") from err


def load_data_config_file(path: str | Path) -> list[str]:
    """Load configs from a .py file or module name (which registers them) or a YAML file.

    Returns the names registered by a YAML file; for Python it returns the names that appeared.
    """
    text = str(path)
    if text.endswith((".yaml", ".yml")):
        return _load_yaml_configs(Path(text))
    before = set(DATA_CONFIG_MAP)
    if text.endswith(".py"):
        file = Path(text)
        if not file.is_file():
            raise FileNotFoundError(f"data config file {file} does not exist")
        spec = importlib.util.spec_from_file_location(f"beingh_user_config_{file.stem}", file)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        importlib.import_module(text)
    return sorted(set(DATA_CONFIG_MAP) - before)


_YAML_CONFIG_KEYS = {"video_keys", "video_source_columns", "state", "action", "language", "unified_mapping",
                     "state_normalization_modes", "action_normalization_modes", "action_relative_to_state"}


def _load_yaml_configs(path: Path) -> list[str]:
    """YAML schema:

    data_configs:
      my_robot:
        video_keys: [video.front]                         # optional, default: keys of video_source_columns
        video_source_columns: {video.front: observation.images.front}
        state:  {state.eef_position: {source_column: observation.state, start: 0, end: 3}}
        action: {action.eef_position: {source_column: action, start: 0, end: 3, absolute: false}}
        language: {language.instruction: {source_column: task_index}}   # optional (this is the default)
        unified_mapping: {state.eef_position: [0, 3], action.eef_position: [0, 3]}
        state_normalization_modes: {state.eef_position: min_max}
        action_normalization_modes: {}
        action_relative_to_state: {}
    """
    if not path.is_file():
        raise FileNotFoundError(f"data config file {path} does not exist")
    document = yaml.safe_load(path.read_text()) or {}
    configs = document.get("data_configs") if isinstance(document, dict) else None
    if not isinstance(configs, dict) or not configs:
        raise ValueError(f"{path}: expected a top-level 'data_configs' mapping of name -> config")
    for name, spec in configs.items():
        register_data_config(name, data_config_from_dict(name, spec, where=f"{path}:{name}"))
    return list(configs)


def _modality_defs(specs: Any, where: str) -> dict[str, ModalityDef]:
    if not isinstance(specs, dict):
        raise ValueError(f"{where}: expected a mapping of key -> modality definition")
    allowed = {f.name for f in fields(ModalityDef)}
    defs = {}
    for key, spec in specs.items():
        unknown = set(spec) - allowed if isinstance(spec, dict) else None
        if unknown is None or unknown:
            raise ValueError(f"{where}[{key!r}]: expected a mapping with fields {sorted(allowed)}, got {spec!r}")
        defs[key] = ModalityDef(**spec)
    return defs


def data_config_from_dict(name: str, spec: Mapping[str, Any], where: str = "data config") -> type[BaseDataConfig]:
    """Build a config class from a YAML/JSON-style mapping (schema in `_load_yaml_configs`)."""
    unknown = set(spec) - _YAML_CONFIG_KEYS
    if unknown:
        raise ValueError(f"{where}: unknown fields {sorted(unknown)}; allowed: {sorted(_YAML_CONFIG_KEYS)}")
    state = _modality_defs(spec.get("state", {}), f"{where}.state")
    action = _modality_defs(spec.get("action", {}), f"{where}.action")
    language = _modality_defs(spec.get("language", {"language.instruction": {"source_column": "task_index"}}),
                              f"{where}.language")
    sources = dict(spec.get("video_source_columns", {}))
    attrs = {
        "VIDEO_KEYS": list(spec.get("video_keys", sources)),
        "VIDEO_SOURCE_COLUMNS": sources,
        "STATE_KEYS": list(state),
        "ACTION_KEYS": list(action),
        "LANGUAGE_KEYS": list(language),
        "UNIFIED_MAPPING": {k: tuple(v) for k, v in spec.get("unified_mapping", {}).items()},
        "MODALITIES": {**language, **state, **action},
        "ACTION_RELATIVE_TO_STATE": dict(spec.get("action_relative_to_state", {})),
        "state_normalization_modes": dict(spec.get("state_normalization_modes", {})),
        "action_normalization_modes": dict(spec.get("action_normalization_modes", {})),
    }
    class_name = "".join(part.capitalize() for part in name.replace("-", "_").split("_")) + "DataConfig"
    return type(class_name, (BaseDataConfig,), {**attrs, "_SPEC": (name, dict(spec), where)})


def _instance_from_spec(name: str, spec: Mapping[str, Any], where: str) -> BaseDataConfig:
    cls = data_config_from_dict(name, spec, where)
    return cls.__new__(cls)


def _instance_from_registry(name: str) -> BaseDataConfig:
    cls = get_data_config(name)
    return cls.__new__(cls)


def _importable(cls: type) -> bool:
    target: Any = sys.modules.get(cls.__module__)
    for part in cls.__qualname__.split("."):
        target = getattr(target, part, None)
    return target is cls


_LANGUAGE = {"language.instruction": ModalityDef(source_column="task_index")}


class LiberoNoNormDataConfig(BaseDataConfig):
    """LIBERO Franka, no normalization (reference/upstream_data.md §2.2); gripper action raw +-1."""

    VIDEO_KEYS = ["video.top_view", "video.wrist_view"]
    VIDEO_SOURCE_COLUMNS = {
        "video.top_view": "observation.images.image",
        "video.wrist_view": "observation.images.wrist_image",
    }
    STATE_KEYS = ["state.eef_position", "state.eef_rotation", "state.libero_gripper_position"]
    ACTION_KEYS = ["action.eef_position", "action.eef_rotation", "action.gripper_position"]
    UNIFIED_MAPPING = {
        "state.eef_position": (0, 3),
        "state.eef_rotation": (3, 6),
        "state.libero_gripper_position": (44, 46),
        "action.eef_position": (0, 3),
        "action.eef_rotation": (3, 6),
        "action.gripper_position": (18, 19),
    }
    MODALITIES = {
        **_LANGUAGE,
        "state.eef_position": ModalityDef("observation.state", 0, 3),
        "state.eef_rotation": ModalityDef("observation.state", 3, 6, rotation_type="axis_angle"),
        "state.libero_gripper_position": ModalityDef("observation.state", 6, 8),
        "action.eef_position": ModalityDef("action", 0, 3, absolute=False),
        "action.eef_rotation": ModalityDef("action", 3, 6, absolute=False, rotation_type="axis_angle"),
        "action.gripper_position": ModalityDef("action", 6, 7),
    }


class LiberoPrivilegedDataConfig(LiberoNoNormDataConfig):
    """`libero_nonorm` plus the privileged positions of the task's two objects of interest
    (`observation.environment_state` = [bowl xyz, plate xyz] for libero_spatial, written by `beingh demo
    collect --env libero` and sent by the LIBERO client) as state in unused unified dims 75:81.

    A real robot has no such input: as `metaworld_goal`, it shows the ceiling of the CPU pipeline (a tiny
    model trained for minutes) when the policy need not localize the objects in the camera images.
    """

    STATE_KEYS = [*LiberoNoNormDataConfig.STATE_KEYS, "state.object_position", "state.target_position"]
    UNIFIED_MAPPING = {
        **LiberoNoNormDataConfig.UNIFIED_MAPPING,
        "state.object_position": (75, 78),
        "state.target_position": (78, 81),
    }
    MODALITIES = {
        **LiberoNoNormDataConfig.MODALITIES,
        "state.object_position": ModalityDef("observation.environment_state", 0, 3),
        "state.target_position": ModalityDef("observation.environment_state", 3, 6),
    }
    state_normalization_modes = {"state.object_position": "min_max", "state.target_position": "min_max"}


class RobocasaHumanDataConfig(BaseDataConfig):
    """RoboCasa mobile manipulator (reference/upstream_data.md §2.3).

    The base quaternion is declared real-first like the released config, although robosuite stores
    xyzw (§10.7): kept for checkpoint compatibility, see `beingh.data.rotation`.
    """

    VIDEO_KEYS = ["video.left_view", "video.right_view", "video.wrist_view"]
    VIDEO_SOURCE_COLUMNS = {
        "video.left_view": "observation.images.left_view",
        "video.right_view": "observation.images.right_view",
        "video.wrist_view": "observation.images.wrist_view",
    }
    STATE_KEYS = ["state.eef_position", "state.eef_rotation", "state.gripper_qpos", "state.base_position",
                  "state.base_rotation"]
    ACTION_KEYS = ["action.eef_position", "action.eef_rotation", "action.gripper_position",
                   "action.base_motion", "action.control_mode"]
    UNIFIED_MAPPING = {
        "state.eef_position": (0, 3),
        "state.eef_rotation": (3, 6),
        "state.gripper_qpos": (44, 46),
        "state.base_position": (70, 73),
        "state.base_rotation": (73, 76),
        "action.eef_position": (0, 3),
        "action.eef_rotation": (3, 6),
        "action.gripper_position": (18, 19),
        "action.base_motion": (70, 74),
        "action.control_mode": (74, 75),
    }
    MODALITIES = {
        **_LANGUAGE,
        "state.eef_position": ModalityDef("world_abs_state", 0, 3),
        "state.eef_rotation": ModalityDef("world_abs_state", 3, 6, rotation_type="axis_angle"),
        "state.gripper_qpos": ModalityDef("world_abs_state", 6, 8),
        "state.base_position": ModalityDef("observation.state", 0, 3),
        "state.base_rotation": ModalityDef("observation.state", 3, 7, rotation_type="quaternion"),
        "action.eef_position": ModalityDef("world_delta_action", 0, 3, absolute=False),
        "action.eef_rotation": ModalityDef("world_delta_action", 3, 6, absolute=False, rotation_type="axis_angle"),
        "action.gripper_position": ModalityDef("world_delta_action", 6, 7),
        "action.base_motion": ModalityDef("action", 7, 11, absolute=False),
        "action.control_mode": ModalityDef("action", 11, 12),
    }
    action_normalization_modes = {"action.gripper_position": "binary", "action.control_mode": "binary"}


class MetaWorldDataConfig(BaseDataConfig):
    """Sawyer in MetaWorld, as written by `beingh demo` (observation.state = [hand xyz, gripper opening],
    action = [dx, dy, dz, grip] clipped to [-1, 1]).

    States are min_max-normalized (hand xyz spans only a few decimetres, so raw values would use a tiny
    part of [-1, 1]). Actions are left raw: they are already in [-1, 1] and saturate often, so a
    clipping mode (q99) would lose the inverse and min_max would only rescale by ~1.
    """

    VIDEO_KEYS = ["video.corner"]
    VIDEO_SOURCE_COLUMNS = {"video.corner": "observation.images.corner"}
    STATE_KEYS = ["state.eef_position", "state.gripper"]
    ACTION_KEYS = ["action.eef_position", "action.gripper"]
    UNIFIED_MAPPING = {
        "state.eef_position": (0, 3),
        "state.gripper": (18, 19),
        "action.eef_position": (0, 3),
        "action.gripper": (18, 19),
    }
    MODALITIES = {
        **_LANGUAGE,
        "state.eef_position": ModalityDef("observation.state", 0, 3),
        "state.gripper": ModalityDef("observation.state", 3, 4),
        "action.eef_position": ModalityDef("action", 0, 3, absolute=False),
        "action.gripper": ModalityDef("action", 3, 4),
    }
    state_normalization_modes = {"state.eef_position": "min_max", "state.gripper": "min_max"}


class MetaWorldGoalDataConfig(MetaWorldDataConfig):
    """`metaworld` plus the privileged object and goal positions (`observation.environment_state` =
    [object xyz, goal xyz], written by `beingh demo collect`) as state in unused unified dims 75:81.

    A real robot has no such input: this config exists so the CPU demo (a tiny model trained for minutes)
    can show the training -> serving -> closed-loop path working; with `metaworld` the policy has to find
    the goal in the camera image, which that budget does not teach reliably.
    """

    STATE_KEYS = [*MetaWorldDataConfig.STATE_KEYS, "state.object_position", "state.goal_position"]
    UNIFIED_MAPPING = {
        **MetaWorldDataConfig.UNIFIED_MAPPING,
        "state.object_position": (75, 78),
        "state.goal_position": (78, 81),
    }
    MODALITIES = {
        **MetaWorldDataConfig.MODALITIES,
        "state.object_position": ModalityDef("observation.environment_state", 0, 3),
        "state.goal_position": ModalityDef("observation.environment_state", 3, 6),
    }
    state_normalization_modes = {
        **MetaWorldDataConfig.state_normalization_modes,
        "state.object_position": "min_max",
        "state.goal_position": "min_max",
    }


class MetaWorldTwoViewDataConfig(MetaWorldDataConfig):
    """`metaworld` (camera only, no privileged state) with a second, top-down camera
    (`observation.images.top`, written by `beingh demo` for this config): the goal's x, y are image
    coordinates there, and with the corner view its height is fixed too."""

    VIDEO_KEYS = ["video.corner", "video.top"]
    VIDEO_SOURCE_COLUMNS = {"video.corner": "observation.images.corner", "video.top": "observation.images.top"}


register_data_config("libero_nonorm", LiberoNoNormDataConfig)
register_data_config("libero_privileged", LiberoPrivilegedDataConfig)
register_data_config("robocasa_human", RobocasaHumanDataConfig)
register_data_config("metaworld", MetaWorldDataConfig)
register_data_config("metaworld_goal", MetaWorldGoalDataConfig)
register_data_config("metaworld_2view", MetaWorldTwoViewDataConfig)
