"""See what an agent did: per-step transcripts, dry runs of any agent, and ``agl-tinker view``.

- :mod:`agl_tinker.viewer.transcripts`: a step's rollouts as transcript rows (pure);
- :mod:`agl_tinker.viewer.writer`: the rows as ``<log_path>/transcripts/step_NNNNNN.jsonl``;
"""
