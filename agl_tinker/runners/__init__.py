"""Running the user's agent: the deadline runner, runner supervision, tracer repair, in-process runners."""
