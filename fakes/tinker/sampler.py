"""Drawing tokens from the policy, one position at a time, in numpy.

A ``Cursor`` follows a growing token sequence with the same turn logic as ``Policy.score``
(assistant header opens a turn, the end-of-turn token closes it) and keeps the set of candidate rows
still consistent with the answer so far, so each step costs a few small numpy operations.
The next-token distribution is kept in factored form: explicit entries (trie tokens) plus one
block per background bucket whose tokens share a probability; temperature, top-k and top-p act
on that form without materialising 151k probabilities.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from .policy import BUCKETS, Policy


@dataclasses.dataclass(frozen=True)
class Entries:
    """The next-token distribution: ``count[i]`` tokens each with log-probability ``logp[i]``.

    ``token[i] >= 0`` is an explicit token (count 1); ``token[i] = -1 - b`` stands for the
    tokens of bucket ``b`` that are not explicit.
    """

    token: np.ndarray
    logp: np.ndarray
    count: np.ndarray


class Cursor:
    """The policy's next-token distribution along a sequence that grows one token at a time."""

    def __init__(self, policy: Policy, tokens: np.ndarray) -> None:
        if len(tokens) == 0:
            raise ValueError("a prompt needs at least one token")
        self.policy = policy
        self.tokens: list[int] = [int(t) for t in tokens]
        self._header = list(policy.header)
        self._closers = set(policy.closers.tolist())
        self._rows: np.ndarray | None = None
        self._weights = np.zeros(0)
        self._alive = np.zeros(0, dtype=bool)
        self._length = 0
        self._row = -1  # a row drawn from the consistent ones, followed while it stays consistent
        self._log_keep, self._log_eps = policy.log_eps()
        self._eps = math.exp(self._log_eps)
        anchor = policy.open_turn(np.asarray(tokens, dtype=np.int64))
        if anchor >= 0:
            self._enter(anchor)

    def _enter(self, anchor: int) -> None:
        context = np.asarray(self.tokens, dtype=np.int64)
        cs = self.policy.candidates(context[:anchor])
        logits = self.policy.row_log_weights(cs)
        self._rows = cs.rows
        self._row = -1
        self._weights = np.exp(logits - logits.max())
        prefix = context[anchor:]
        self._length = len(prefix)
        if self._length >= cs.rows.shape[1]:
            self._alive = np.zeros(len(cs.rows), dtype=bool)
        else:
            self._alive = (cs.rows[:, : self._length] == prefix[None, :]).all(axis=1)

    def advance(self, token: int) -> None:
        self.tokens.append(int(token))
        if self._rows is not None:
            if token in self._closers:
                self._rows = None
            elif self._length < self._rows.shape[1]:
                self._alive &= self._rows[:, self._length] == token
                self._length += 1
            else:
                self._alive[:] = False
        if self.tokens[-len(self._header) :] == self._header:
            self._enter(len(self.tokens))

    def _trie(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Trie tokens and their probabilities, or None when no candidate row is consistent."""
        if self._rows is None or not self._alive.any():
            return None
        nxt = self._rows[self._alive, self._length]
        weights = self._weights[self._alive]
        tokens, inverse = np.unique(nxt, return_inverse=True)
        probs = np.bincount(inverse, weights=weights)
        return tokens, probs / probs.sum()

    def entries(self) -> Entries:
        policy = self.policy
        buckets = policy.buckets
        log_bucket = policy.background_logprobs(self.tokens[-1])
        log_tok = log_bucket - buckets.log_size  # per-token logprob inside each bucket
        trie = self._trie()
        if trie is None:
            return Entries(-1 - np.arange(BUCKETS), log_tok, buckets.size.astype(np.int64))
        log_keep, log_eps = self._log_keep, self._log_eps
        tokens, probs = trie
        own = buckets.of_token[tokens]
        explicit = np.logaddexp(log_keep + np.log(probs), log_eps + log_tok[own])
        count = buckets.size.astype(np.int64) - np.bincount(own, minlength=BUCKETS)
        return Entries(
            np.concatenate([tokens, -1 - np.arange(BUCKETS)]),
            np.concatenate([explicit, log_eps + log_tok]),
            np.concatenate([np.ones(len(tokens), dtype=np.int64), count]),
        )

    def draw(self, rng: np.random.Generator, temperature: float, top_k: int, top_p: float) -> int:
        if temperature == 1.0 and top_k <= 0 and top_p >= 1.0:
            return self._draw_plain(rng)
        e = self.entries()
        keep = e.count > 0
        token, count = e.token[keep], e.count[keep]
        logp = e.logp[keep] if temperature <= 0 else e.logp[keep] / temperature
        order = np.argsort(-logp, kind="stable")
        token, logp, count = token[order], logp[order], count[order]
        if temperature <= 0:  # greedy
            token, logp, count = token[:1], logp[:1], np.ones(1, dtype=np.int64)
        if top_k > 0:
            before = np.cumsum(count) - count
            keep = before < top_k
            token, logp = token[keep], logp[keep]
            count = np.minimum(count[keep], top_k - before[keep])
        mass = count * np.exp(logp - logp.max())
        if top_p < 1.0:
            cumulative = np.cumsum(mass) / mass.sum()
            cut = int(np.searchsorted(cumulative, top_p)) + 1
            token, count, mass = token[:cut], count[:cut], mass[:cut]
        choice = int(rng.choice(len(mass), p=mass / mass.sum()))
        return self._token_of(int(token[choice]), token, rng)

    def _draw_plain(self, rng: np.random.Generator) -> int:
        """Exact draw from the mixture: pick the component, then the token.

        The trie component draws a whole row up front and follows it: a row drawn in proportion
        to the weights of the consistent rows, read one token at a time, is the chain rule of the
        trie distribution. The row is redrawn whenever a background token makes it inconsistent.
        """
        if self._rows is not None and rng.random() >= self._eps:
            if self._row < 0 or not self._alive[self._row]:
                alive = np.flatnonzero(self._alive)
                if len(alive):
                    cumulative = np.cumsum(self._weights[alive])
                    pick = int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))
                    self._row = int(alive[min(pick, len(alive) - 1)])
            if self._row >= 0 and self._alive[self._row]:
                return int(self._rows[self._row, self._length])
        log_bucket = self.policy.background_logprobs(self.tokens[-1])
        bucket = int(rng.choice(BUCKETS, p=np.exp(log_bucket)))
        return self.policy.buckets.draw(bucket, rng)

    def _token_of(self, entry: int, tokens: np.ndarray, rng: np.random.Generator) -> int:
        if entry >= 0:
            return entry
        explicit = set(tokens[tokens >= 0].tolist())
        while True:
            token = self.policy.buckets.draw(-1 - entry, rng)
            if token not in explicit:
                return token

    def logprob(self, token: int) -> float:
        """log p(token | sequence so far): the mixture ``Policy.score`` computes, in numpy."""
        buckets = self.policy.buckets
        bucket = int(buckets.of_token[token])
        log_bg = float(self.policy.background_logprobs(self.tokens[-1])[bucket] - buckets.log_size[bucket])
        if self._rows is None or self._length >= self._rows.shape[1] or not self._alive.any():
            return log_bg
        mass = float(self._weights[self._alive].sum())
        hit = float(self._weights[self._alive & (self._rows[:, self._length] == token)].sum())
        log_trie = self._log_keep + math.log(hit) - math.log(mass) if hit > 0 else -math.inf
        return float(np.logaddexp(log_trie, self._log_eps + log_bg))

    def top_k(self, k: int) -> list[tuple[int, float]]:
        """The ``k`` most likely next tokens with their logprobs (bucket ties broken by id)."""
        e = self.entries()
        order = np.argsort(-e.logp, kind="stable")
        explicit = set(e.token[e.token >= 0].tolist())
        out: list[tuple[int, float]] = []
        for i in order:
            if len(out) >= k:
                break
            entry, logp = int(e.token[i]), float(e.logp[i])
            if entry >= 0:
                out.append((entry, logp))
                continue
            bucket = -1 - entry
            ids = np.flatnonzero(self.policy.buckets.of_token == bucket)
            for token in ids[: k - len(out) + len(explicit)]:
                if int(token) not in explicit and len(out) < k:
                    out.append((int(token), logp))
        return out


def generate(
    policy: Policy,
    prompt: np.ndarray,
    rng: np.random.Generator,
    *,
    max_tokens: int,
    stop_tokens: set[int],
    stop_strings: list[str],
    temperature: float,
    top_k: int,
    top_p: float,
) -> tuple[list[int], list[float], str]:
    """One sampled continuation, the model's logprob of each token, and the stop reason."""
    cursor = Cursor(policy, prompt)
    out: list[int] = []
    logprobs: list[float] = []
    while len(out) < max_tokens:
        token = cursor.draw(rng, temperature, top_k, top_p)
        out.append(token)
        logprobs.append(cursor.logprob(token))
        if token in stop_tokens:
            return out, logprobs, "stop"
        if stop_strings:
            text = policy.vocab.decode(out)
            if any(s in text for s in stop_strings):
                return out, logprobs, "stop"
        cursor.advance(token)
    return out, logprobs, "length"
