"""Training: the sharded jitted steps (step), a run made ready (run), what a program's seeds
share (program) and their stacked state (seeds), the loop (loop), the run directory while
it trains (rundir), orbax checkpoints (checkpoint), stopping on a signal (preemption)."""
