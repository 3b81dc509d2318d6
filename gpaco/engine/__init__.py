"""Training engine: LR schedules, checkpoints, run logging (and the loops built on them)."""
