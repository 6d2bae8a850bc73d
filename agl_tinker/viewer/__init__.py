"""See what an agent did: per-step transcripts, dry runs of any agent, and ``agl-tinker view``.

- :mod:`agl_tinker.viewer.transcripts`: a step's rollouts as transcript rows (pure);
- :mod:`agl_tinker.viewer.writer`: the rows as ``<log_path>/transcripts/step_NNNNNN.jsonl``;
- :mod:`agl_tinker.viewer.layout`: where those files are (shared with the reader, no heavy import);
- :mod:`agl_tinker.viewer.dryrun`, :mod:`agl_tinker.viewer.text`: ``dryrun`` / ``evaluate`` of any agent;
- :mod:`agl_tinker.viewer.run_files`, :mod:`agl_tinker.viewer.server`, ``static/``: ``agl-tinker view``;
- :mod:`agl_tinker.viewer.commands`: the three subcommands, as the CLI dispatches to them.
"""
