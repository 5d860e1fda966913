"""The one training loop, its optimizers, schedules, checkpoints and logs."""
