"""20 Questions: a multi-turn agent that asks yes/no questions, may search, and must name a secret.

``agent.py`` is the player (plain OpenAI-client code); ``answerer.py`` and ``search.py`` are its
environment, offline simulators over ``knowledge.py`` unless environment variables point them at
live services; ``evaluate.py`` scores any OpenAI-compatible model on ``data/q20.csv``.
"""
