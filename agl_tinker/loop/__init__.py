"""The training loop: dispatch rollouts through the store, turn them into datums, train, swap weights.

Also the Agent-lightning ``Algorithm`` (``algo``), the run configuration (``config``), datasets
(``data``), checkpoints, retries of Tinker calls, progress and the end-of-run report.
"""
