"""Open a policy for evaluation: a checkpoint folder (in-process `BeingHPolicy`) or a `ws://host:port` server."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

METADATA_SUFFIX = "_metadata.json"


@dataclass
class PolicySpec:
    policy: str  # checkpoint folder or ws://host:port
    data_config_name: str | None  # None: the one the policy was trained with (see `open_policy`)
    embodiment_tag: str
    dataset_name: str | None = None  # default: the single <group>_metadata.json in experiment_cfg/
    instruction_template: str | None = None  # None: the checkpoint's training prompt_template, else "long"
    metadata_variant: str | None = None
    stats_selection_mode: str = "auto"
    device: str | None = None
    num_inference_timesteps: int | None = None
    enable_rtc: bool = False
    rtc_inference_delay: int | None = None
    timeout: float = 60.0
    default_data_config: str = "metaworld"  # when neither the user nor the policy names one


def is_server_address(policy: str) -> bool:
    return policy.startswith(("ws://", "wss://"))


def training_group(checkpoint: Path) -> str:
    """The dataset group a checkpoint was trained on, from its `experiment_cfg/<group>_metadata.json`."""
    folder = checkpoint / "experiment_cfg"
    groups = sorted(p.name[: -len(METADATA_SUFFIX)] for p in folder.glob(f"*{METADATA_SUFFIX}"))
    if len(groups) != 1:
        found = groups or "none"
        raise ValueError(f"{folder}: expected exactly one *{METADATA_SUFFIX} to pick the dataset group, found "
                         f"{found}; pass --dataset_name")
    return groups[0]


def trained_prompt_template(checkpoint: Path) -> str:
    """The `--prompt_template` the checkpoint was trained with (its train_args.json), else "long"."""
    args_file = checkpoint / "train_args.json"
    if not args_file.is_file():
        return "long"
    return json.loads(args_file.read_text()).get("data", {}).get("prompt_template", "long")


def trained_data_config(checkpoint: Path, spec: PolicySpec) -> str | None:
    """The data config recorded in the checkpoint's metadata variant that the policy will use."""
    from beingh.data.metadata import find_metadata_file, load_metadata

    group = spec.dataset_name or training_group(checkpoint)
    metadata = load_metadata(find_metadata_file(checkpoint, group), group, spec.metadata_variant,
                             spec.stats_selection_mode)
    return metadata.data_config


def open_policy(spec: PolicySpec):
    """-> an object with `get_action(obs, executed_steps=None)` and `reset()`.

    Fills `spec.data_config_name` when it is None: from the checkpoint's metadata, or from the server's
    metadata on connect, else `spec.default_data_config`; callers build observations with it afterwards.
    """
    if is_server_address(spec.policy):
        from beingh.inference.client import PolicyClient

        address = urlparse(spec.policy)
        if not address.hostname or not address.port:
            raise ValueError(f"--policy {spec.policy!r}: expected ws://host:port")
        client = PolicyClient(address.hostname, address.port, timeout=spec.timeout)
        served = client.metadata.get("data_config_name")
        if spec.data_config_name is not None and served is not None and served != spec.data_config_name:
            client.close()
            raise ValueError(f"--data_config_name {spec.data_config_name!r}, but {spec.policy} serves {served!r}")
        spec.data_config_name = spec.data_config_name or served or spec.default_data_config
        return client
    from beingh.inference.policy import BeingHPolicy

    checkpoint = Path(spec.policy)
    if not checkpoint.is_dir():
        raise FileNotFoundError(f"--policy {spec.policy!r}: not a checkpoint folder nor a ws://host:port address")
    if spec.data_config_name is None:
        spec.data_config_name = trained_data_config(checkpoint, spec) or spec.default_data_config
    return BeingHPolicy(
        model_path=checkpoint,
        data_config_name=spec.data_config_name,
        dataset_name=spec.dataset_name or training_group(checkpoint),
        embodiment_tag=spec.embodiment_tag,
        instruction_template=spec.instruction_template or trained_prompt_template(checkpoint),
        metadata_variant=spec.metadata_variant,
        stats_selection_mode=spec.stats_selection_mode,
        device=spec.device,
        num_inference_timesteps=spec.num_inference_timesteps,
        enable_rtc=spec.enable_rtc,
        rtc_inference_delay=spec.rtc_inference_delay,
    )
