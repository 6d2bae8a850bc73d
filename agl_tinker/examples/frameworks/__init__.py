"""Agents written with mainstream frameworks, trained through the same endpoint unchanged."""
