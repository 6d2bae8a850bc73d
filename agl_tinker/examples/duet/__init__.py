"""Duet: two cooperating agents, each trained as its own LoRA in one run (``TrainConfig.policies``)."""
