"""The simulated base model follows the text ReAct format when a prompt asks for it (CrewAI's agents do)."""

from __future__ import annotations

from fakes.tinker.prior import REACT_FINAL, Conversation, load_prior

CREWAI_SYSTEM = (
    "You are 20 Questions player. You play 20 Questions.\nYour personal goal is: find the secret\n"
    "You ONLY have access to the following tools, and should NEVER make up tools that are not listed here:\n\n"
    "Tool Name: search\nTool Arguments: {'query': {'description': 'keywords', 'type': 'str'}}\n"
    "Tool Description: Search an encyclopedia.\n\n"
    "Once all necessary information is gathered, return the following format:\n\n"
    "Thought: I now know the final answer\nFinal Answer: the final answer to the original input question"
)


def _prompt(system: str, user: str) -> str:
    return (
        f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    )


def test_react_prompt_gets_final_answers_and_text_actions_for_described_tools() -> None:
    texts = [
        b.text
        for b in load_prior().behaviours(Conversation.parse(_prompt(CREWAI_SYSTEM, "A dog?\nThought:")))
    ]
    actions = [t for t in texts if "\nAction: " in t]
    assert actions and all('Action: search\nAction Input: {"query": ' in t for t in actions)
    answers = [t for t in texts if t not in actions]
    assert answers and all(t.startswith(REACT_FINAL) for t in answers)


def test_plain_chat_prompt_is_unchanged() -> None:
    texts = [b.text for b in load_prior().behaviours(Conversation.parse(_prompt("You help users.", "Hello")))]
    assert texts and not any("Final Answer:" in t or "Action:" in t for t in texts)
