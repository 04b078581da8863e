"""Training: arguments, FSDP2, optimizer/schedule, checkpoints, loop, metadata writer."""
