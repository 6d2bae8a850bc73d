"""Hello 1024: the agent learns to say it is a given identity."""
