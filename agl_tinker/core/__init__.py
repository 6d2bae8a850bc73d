"""The pure core: spans of one rollout -> LLM calls -> token sequences -> rewarded trajectories.

Pipeline, one module per job: :mod:`.readers` (one per span writer format) -> :mod:`.merge` ->
:mod:`.validate` -> :mod:`.reconstruct` (ordered calls and reward events, :mod:`.types`) ->
:mod:`.align` (token sequences, :mod:`.drift` reports) -> :mod:`.rewards` (per-step rewards, the
one status -> exclusion map) -> :mod:`.trajectory` (the orchestrator: cookbook trajectories and
groups).

Nothing here does I/O or imports a server, a store or the Tinker SDK's clients; every function is
a pure function of its arguments, so the core is tested with hypothesis properties and benchmarked
alone.
"""
