"""The ground floor: files local or in buckets, checkpoints, logs, preemption, the compilation
cache, and where a run's files lie."""
