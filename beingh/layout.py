"""Sizes shared by data, model and the simulator clients, in a module that imports nothing.

`beingh.data` (and through it the LIBERO client, which runs in a venv without torch) needs the width of
the unified space; `beingh.batch` re-exports it for the model side.
"""

UNIFIED_DIM = 200
"""Width of the unified state and action vectors (reference/guide_unified_action_space.md)."""
