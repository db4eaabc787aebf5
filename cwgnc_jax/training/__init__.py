"""Training: the sharded jitted steps (step), orbax checkpoints (checkpoint), the loop (loop)."""
