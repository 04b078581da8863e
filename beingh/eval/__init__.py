"""Evaluation: simulators, demo generation, closed-loop runner."""
