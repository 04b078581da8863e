"""Write rollout frames to an mp4 with PyAV (h264) for humans to watch."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np


def write_mp4(path: str | Path, frames: list[np.ndarray], fps: int = 20) -> Path:
    if not frames:
        raise ValueError(f"write_mp4({path}): no frames")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = frames[0].shape[:2]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = width - width % 2, height - height % 2
        stream.pix_fmt = "yuv420p"
        for image in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image[: stream.height, : stream.width]),
                                               format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path
