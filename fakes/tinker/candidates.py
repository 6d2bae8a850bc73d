"""Per-prompt candidate answers of the simulated policy, as token rows of a trie.

For a prompt (everything before an assistant turn's content), the prior proposes behaviours;
each becomes one token row per answer prefix of the model's chat format (``prefix + text +
end-of-turn``, e.g. ``<|im_end|>``; a plain answer's text opens with the format's answer channel, a
tool call's ends with its tool-call end where it has one, e.g. harmony's ``<|call|>``), plus, when drift is on, rows that split one token into two (same text,
non-canonical tokens). Rows are what the
policy mixes over; the prompt's hashed features and each behaviour's hashed features are
what the trainable parameters read. Building this is the costly part, so it is cached.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import re
import threading
import zlib
from collections import OrderedDict

import numpy as np

from fakes.lineup import ChatFormat

from .prior import Behaviour, Conversation, load_prior
from .vocab import Vocab

PROMPT_FEATURES = 4096
BEHAVIOUR_FEATURES = 4096
_WORD = re.compile(r"[a-z0-9]+")
REASONING = "reasoning"
"""Template and category of the reasoning message a format may write before its answer."""
_CACHE_SIZE = int(os.environ.get("AGL_TINKER_SIM_CANDIDATE_CACHE", "256"))
"""Prompts whose candidate sets stay cached (~40 KB each): enough for a step's sampling and
training to share them; more only grows the process of a run that sees new prompts every step."""


def bucket(name: str, size: int) -> int:
    """Stable (process-independent) feature hashing."""
    return zlib.crc32(name.encode("utf-8")) % size


@dataclasses.dataclass(frozen=True)
class CandidateSet:
    """The trie rows for one prompt and the features the trainable parameters see."""

    rows: np.ndarray  # int64 [R, L], -1 padded; each row ends with the end-of-turn token
    lengths: np.ndarray  # int64 [R]
    prior: np.ndarray  # float64 [R]: behaviour prior logit + log share of this tokenization
    behaviour_of_row: np.ndarray  # int64 [R]
    behaviour_features: np.ndarray  # int64 [nnz], flattened per behaviour
    behaviour_offsets: np.ndarray  # int64 [B]
    prompt_features: np.ndarray  # int64 [k]
    prompt_weights: np.ndarray  # float64 [k], L2-normalised
    behaviours: tuple[Behaviour, ...]


def prompt_feature_names(conversation: Conversation) -> list[str]:
    """Generic bag-of-words features: what was asked, the system prompt, tools, turn count."""
    names = ["bias"]
    last = _WORD.findall(conversation.last_user.lower())[:48]
    names += [f"u:{w}" for w in last]
    names += [f"u2:{a}_{b}" for a, b in itertools.pairwise(last)]
    names += [f"s:{w}" for w in _WORD.findall(conversation.system.lower())[:64]]
    dialogue = conversation.dialogue()
    names.append(f"turns:{min(len(dialogue), 8)}")
    names.append(f"tools:{bool(conversation.tools())}")
    previous = [m for m in dialogue if m.role == "assistant"]
    if previous:
        names += [f"a:{w}" for w in _WORD.findall(previous[-1].content.lower())[:8]]
    return list(dict.fromkeys(names))


def behaviour_feature_names(behaviour: Behaviour) -> list[str]:
    names = ["bias", f"tpl:{behaviour.template}", f"cat:{behaviour.category}"]
    names += [f"fill:{slot}={value.lower()}" for slot, value in behaviour.fills]
    return names


def _drift_variants(row: tuple[int, ...], vocab: Vocab) -> list[tuple[int, ...]]:
    """Up to two re-tokenizations of ``row`` that split one token (first and middle splittable)."""
    splittable = [i for i, tok in enumerate(row[:-1]) if vocab.split(tok) is not None]
    if not splittable:
        return []
    chosen = list(dict.fromkeys([splittable[0], splittable[len(splittable) // 2]]))
    variants = []
    for i in chosen:
        pair = vocab.split(row[i])
        assert pair is not None
        variants.append((*row[:i], *pair, *row[i + 1 :]))
    return variants


def _prefixed_rows(texts: list[str], vocab: Vocab, chat_format: ChatFormat) -> list[list[tuple[int, ...]]]:
    """Per text, one token row per answer prefix (without the closing end-of-turn token)."""
    out: list[list[tuple[int, ...]]] = [[] for _ in texts]
    for prefix in chat_format.answer_prefixes:
        head = tuple(t for piece in prefix[:-1] for t in vocab.encode(piece))
        last = prefix[-1] if prefix else ""
        for rows, ids in zip(out, vocab.encode_many([last + text for text in texts]), strict=True):
            rows.append(head + ids)
    return out


def _with_reasoning(
    behaviours: list[Behaviour], conversation: Conversation, chat_format: ChatFormat
) -> list[Behaviour]:
    """``behaviours``, plus the format's reasoning message (its own behaviour, ending with the
    assistant header) when it has one and the turn is fresh; it gets ``reasoning_share`` of the
    prior mass."""
    if not chat_format.reasoning or conversation.continues_answer or not behaviours:
        return behaviours
    share = chat_format.reasoning_share
    mass = float(np.logaddexp.reduce([b.prior_logit for b in behaviours]))
    logit = mass + math.log(share / (1.0 - share))
    text = chat_format.reasoning + chat_format.assistant_header
    return [*behaviours, Behaviour(text, REASONING, REASONING, (), logit)]


def build_candidate_set(
    prompt: np.ndarray, vocab: Vocab, chat_format: ChatFormat, drift: float
) -> CandidateSet:
    conversation = Conversation.parse(
        vocab.decode(prompt.tolist()),
        chat_format.turn,
        chat_format.end_of_turn,
        chat_format.tools,
        chat_format.roles,
    )
    behaviours = _with_reasoning(
        load_prior().behaviours(conversation, tool_call=chat_format.tool_call), conversation, chat_format
    )
    stop = vocab.single(chat_format.end_of_turn)
    call_stop = vocab.single(chat_format.tool_call_end) if chat_format.tool_call_end else stop
    texts = [
        b.text if b.calls_tool or b.category == REASONING else chat_format.answer_channel + b.text
        for b in behaviours
    ]
    encoded = _prefixed_rows(texts, vocab, chat_format)
    rows: list[tuple[int, ...]] = []
    prior: list[float] = []
    owner: list[int] = []
    for index, (behaviour, prefixed) in enumerate(zip(behaviours, encoded, strict=True)):
        for ids in prefixed:
            # A prompt starts at most one prefix: the variants never compete, so each keeps the
            # behaviour's whole prior (their shares would cancel in the trie's normaliser anyway).
            # A reasoning row ends with the header that opens the answer: no stop token closes it.
            end = () if behaviour.category == REASONING else (call_stop if behaviour.calls_tool else stop,)
            canonical = (*ids, *end)
            variants = _drift_variants(canonical, vocab) if drift > 0 else []
            shares = [(canonical, 1.0 - drift if variants else 1.0)]
            shares += [(v, drift / len(variants)) for v in variants]
            for tokens, share in shares:
                if share <= 0.0:
                    continue
                rows.append(tokens)
                prior.append(behaviour.prior_logit + math.log(share))
                owner.append(index)
    width = max(len(r) for r in rows)
    matrix = np.full((len(rows), width), -1, dtype=np.int64)
    for i, r in enumerate(rows):
        matrix[i, : len(r)] = r
    features: list[int] = []
    offsets: list[int] = []
    for behaviour in behaviours:
        offsets.append(len(features))
        features += [bucket(n, BEHAVIOUR_FEATURES) for n in behaviour_feature_names(behaviour)]
    prompt_names = prompt_feature_names(conversation)
    return CandidateSet(
        rows=matrix,
        lengths=np.array([len(r) for r in rows], dtype=np.int64),
        prior=np.array(prior, dtype=np.float64),
        behaviour_of_row=np.array(owner, dtype=np.int64),
        behaviour_features=np.array(features, dtype=np.int64),
        behaviour_offsets=np.array(offsets, dtype=np.int64),
        prompt_features=np.array([bucket(n, PROMPT_FEATURES) for n in prompt_names], dtype=np.int64),
        prompt_weights=np.full(len(prompt_names), 1.0 / math.sqrt(len(prompt_names))),
        behaviours=tuple(behaviours),
    )


class CandidateCache:
    """LRU cache of candidate sets, shared by every client of the process."""

    def __init__(self, size: int = _CACHE_SIZE) -> None:
        self._size = size
        self._items: OrderedDict[tuple[bytes, str, ChatFormat, float], CandidateSet] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, prompt: np.ndarray, vocab: Vocab, chat_format: ChatFormat, drift: float) -> CandidateSet:
        key = (prompt.astype(np.int64, copy=False).tobytes(), vocab.name, chat_format, drift)
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
                return found
        built = build_candidate_set(prompt, vocab, chat_format, drift)
        with self._lock:
            self._items[key] = built
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return built


CANDIDATES = CandidateCache()
