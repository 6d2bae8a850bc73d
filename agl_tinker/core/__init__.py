"""The pure core: spans of one rollout -> LLM calls -> token sequences -> rewarded trajectories.

Nothing here does I/O or imports a server, a store or the Tinker SDK; every function is a pure
function of its arguments, so the core is tested with hypothesis properties and benchmarked alone.
"""
