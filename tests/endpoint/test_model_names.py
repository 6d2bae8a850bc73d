"""Slash-free model aliases (issue 32): each stands for exactly one served name."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from agl_tinker.endpoint.model_names import slash_free_aliases


def test_alias_is_the_last_segment_and_ambiguous_or_taken_ones_are_left_out() -> None:
    aliases = slash_free_aliases(["Qwen/Qwen3-8B", "a/b/Llama", "x/Same", "y/Same", "Plain", "z/Plain"])
    assert aliases == {"Qwen3-8B": "Qwen/Qwen3-8B", "Llama": "a/b/Llama"}


NAMES = st.lists(st.text(alphabet="ab/", min_size=1, max_size=5), max_size=6)


@given(NAMES)
def test_every_alias_names_one_served_name_and_shadows_none(names: list[str]) -> None:
    aliases = slash_free_aliases(names)
    for alias, name in aliases.items():
        assert alias and "/" not in alias and alias not in names
        assert name in names and name.rsplit("/", 1)[1] == alias
        assert [n for n in set(names) if "/" in n and n.rsplit("/", 1)[1] == alias] == [name]
