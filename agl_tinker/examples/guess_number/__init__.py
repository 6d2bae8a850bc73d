"""Guess the number, written twice: an OpenAI-client agent (``agent.py``) trained through agl-tinker,
and the same game as a tinker-cookbook ``Env`` (``env.py``); ``tests/test_equivalence.py`` shows the
two train identically."""
