"""The simulated policy: a small trainable model over a served model's full vocabulary.

Inside an assistant turn (after the chat format's assistant header, e.g. Qwen's
``<|im_start|>assistant\\n``, before its end-of-turn token, e.g. ``<|im_end|>``) the next
token is drawn from a mixture

    p(v | context) = (1 - eps) * p_trie(v | answer prefix) + eps * p_bg(v | previous token)

``p_trie`` mixes the prompt's candidate rows (see ``candidates.py``) consistent with the answer
so far, weighted by ``softmax(prior + LoRA shift)``; the shift of behaviour ``b`` for prompt
``x`` is ``(A^T f(x)) . (B^T g(b)) + bias . g(b)`` with hashed sparse features ``f`` and ``g``,
so what training learns on one prompt carries over to prompts that share features. ``p_bg``
is a normaliser-cheap background over all ids (151,669 for Qwen3): a trainable softmax over 128
buckets (one of them is the end-of-turn token alone), uniform inside a bucket. Outside assistant turns only
``p_bg`` speaks. Every sequence therefore has a finite logprob, and the normaliser costs 128
exps per position rather than 151k.

``score`` is the one logprob function: training differentiates it, and the sampler recomputes
the logprobs it returns with it, so on-policy importance ratios are exactly 1.
"""

from __future__ import annotations

import dataclasses
import math
import threading

import numpy as np
import torch
import torch.nn.functional as F

from fakes.lineup import BaseModel

from .candidates import BEHAVIOUR_FEATURES, CANDIDATES, PROMPT_FEATURES, CandidateSet
from .vocab import Vocab

BUCKETS = 128
PREV_FEATURES = 4096
DTYPE = torch.float64

# Which LoRA switch trains which parameters (the SDK requires at least one).
PARAM_GROUPS = {
    "train_attn": ("lora_a", "lora_b"),
    "train_mlp": ("behaviour_bias", "gate"),
    "train_unembed": ("bg_bias", "bg_a", "bg_b"),
}


@dataclasses.dataclass(frozen=True)
class PolicyConfig:
    base_model: BaseModel
    rank: int
    seed: int
    train_attn: bool = True
    train_mlp: bool = True
    train_unembed: bool = True
    background_eps: float = 1e-4
    drift: float = 0.0

    def trainable(self) -> set[str]:
        return {name for flag, names in PARAM_GROUPS.items() if getattr(self, flag) for name in names}


def initial_params(config: PolicyConfig, vocab: Vocab) -> dict[str, torch.Tensor]:
    """LoRA-style init: ``B = 0`` and zero biases, so the initial policy is exactly the prior."""
    gen = torch.Generator().manual_seed(config.seed)
    r = config.rank
    bg_bias = torch.zeros(BUCKETS, dtype=DTYPE)
    bg_bias[0] = math.log(BUCKETS - 1)  # off the prior's answers, end the turn half the time
    eps = config.background_eps
    return {
        "lora_a": torch.randn(PROMPT_FEATURES, r, generator=gen, dtype=DTYPE) / math.sqrt(r),
        "lora_b": torch.zeros(BEHAVIOUR_FEATURES, r, dtype=DTYPE),
        "behaviour_bias": torch.zeros(BEHAVIOUR_FEATURES, dtype=DTYPE),
        "gate": torch.tensor([math.log(eps / (1.0 - eps))], dtype=DTYPE),
        "bg_bias": bg_bias,
        "bg_a": torch.randn(PREV_FEATURES, r, generator=gen, dtype=DTYPE) / math.sqrt(r),
        "bg_b": torch.zeros(r, BUCKETS, dtype=DTYPE),
    }


class Buckets:
    """The background's partition of the vocabulary: ``stop`` alone, the rest by id mod 127."""

    def __init__(self, vocab: Vocab, stop: int) -> None:
        self.vocab_size = vocab.size
        self.stop = stop
        ids = np.arange(vocab.size)
        self.of_token = np.where(ids == self.stop, 0, 1 + ids % (BUCKETS - 1)).astype(np.int64)
        self.size = np.bincount(self.of_token, minlength=BUCKETS).astype(np.float64)
        self.log_size = np.log(self.size)

    def draw(self, bucket: int, rng: np.random.Generator) -> int:
        """A uniform token of ``bucket``."""
        if bucket == 0:
            return self.stop
        stride = BUCKETS - 1
        count = (self.vocab_size - (bucket - 1) + stride - 1) // stride
        while True:
            token = (bucket - 1) + stride * int(rng.integers(count))
            if token != self.stop:
                return token


@dataclasses.dataclass
class _Segment:
    candidates: CandidateSet
    row_offset: int
    behaviour_offset: int


class Policy:
    """Parameters plus the logprob function. Training clients own one; samplers hold a frozen copy."""

    def __init__(self, config: PolicyConfig, vocab: Vocab, params: dict[str, torch.Tensor]) -> None:
        self.config = config
        self.vocab = vocab
        self.params = params
        chat_format = config.base_model.chat_format
        self.stop = vocab.single(chat_format.end_of_turn)
        """The token that closes an assistant turn (the renderer's stop token)."""
        self.closers = np.array([vocab.single(t) for t in chat_format.closing_tokens], dtype=np.int64)
        """Every token that closes an assistant turn: ``stop``, and the one closing a tool call if
        the format has its own (harmony's ``<|call|>``)."""
        self.end_of_text = vocab.single(chat_format.end_of_text)
        self.header: tuple[int, ...] = vocab.encode(chat_format.assistant_header)
        """The tokens that open an assistant turn."""
        self.buckets = Buckets(vocab, self.stop)
        self._header = np.array(self.header, dtype=np.int64)
        self._numpy: dict[str, np.ndarray] | None = None
        self._row_cache: dict[int, tuple[CandidateSet, np.ndarray]] = {}
        self._row_cache_lock = threading.Lock()
        """Samplers draw from several threads: eviction (check the size, pop the oldest) is one step."""

    # ---- parameters -------------------------------------------------------------------------
    def trainable_params(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.params.items() if k in self.config.trainable()}

    def frozen_copy(self) -> Policy:
        return Policy(self.config, self.vocab, {k: v.detach().clone() for k, v in self.params.items()})

    def invalidate(self) -> None:
        """Call after changing parameters in place, so the sampler's numpy view is rebuilt."""
        self._numpy = None
        self._row_cache = {}

    def numpy_params(self) -> dict[str, np.ndarray]:
        if self._numpy is None:
            self._numpy = {k: v.detach().numpy().copy() for k, v in self.params.items()}
        return self._numpy

    def candidates(self, prompt: np.ndarray) -> CandidateSet:
        return CANDIDATES.get(prompt, self.vocab, self.config.base_model.chat_format, self.config.drift)

    # ---- structure of a token sequence ----------------------------------------------------
    def turn_anchors(self, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each position k: the start of the assistant turn containing token k+1, or -1.

        Returns ``(last_anchor, in_turn)`` where ``last_anchor[k]`` is the largest index ``a <= k+1``
        right after an assistant header, and ``in_turn[k]`` says no end-of-turn token came since.
        """
        n = len(tokens)
        marks = np.full(n + 1, -1, dtype=np.int64)
        h = len(self._header)
        if n >= h:
            match = tokens[: n - h + 1] == self._header[0]
            for i in range(1, h):
                match &= tokens[i : n - h + 1 + i] == self._header[i]
            ends = np.flatnonzero(match) + h
            marks[ends] = ends
        last_anchor = np.maximum.accumulate(marks)[1:]
        closes = np.where(np.isin(tokens, self.closers), np.arange(n), -1)
        last_end = np.maximum.accumulate(closes) if n else closes
        in_turn = (last_anchor >= 0) & (last_end < last_anchor)
        return last_anchor, in_turn

    # ---- the logprob function ----------------------------------------------------------------
    def score(
        self,
        inputs: list[np.ndarray],
        targets: list[np.ndarray],
        starts: list[int] | None = None,
    ) -> list[torch.Tensor]:
        """Logprob of ``targets[i][k]`` given ``inputs[i][: k + 1]``, for ``k >= starts[i]``.

        Differentiable w.r.t. ``self.params`` when autograd is on; float64 throughout.
        """
        starts = starts or [0] * len(inputs)
        prev_all: list[np.ndarray] = []
        tgt_all: list[np.ndarray] = []
        segments: list[_Segment] = []
        seg_of_position: list[int] = []  # per trie position: segment index
        trie_positions: list[int] = []
        den_pos: list[np.ndarray] = []
        den_row: list[np.ndarray] = []
        num_pos: list[np.ndarray] = []
        num_row: list[np.ndarray] = []
        total = 0
        rows_total = 0
        behaviours_total = 0
        for m, t, start in zip(inputs, targets, starts, strict=True):
            n = len(m)
            ks = np.arange(start, n)
            prev_all.append(m[start:])
            tgt_all.append(t[start:])
            last_anchor, in_turn = self.turn_anchors(m)
            for anchor in np.unique(last_anchor[ks][in_turn[ks]]):
                seg_ks = ks[(last_anchor[ks] == anchor) & in_turn[ks]]
                cs = self.candidates(m[:anchor])
                rows = cs.rows
                # Past the longest row nothing is consistent: those positions are background only.
                seg_ks = seg_ks[seg_ks + 1 - anchor < rows.shape[1]]
                if len(seg_ks) == 0:
                    continue
                prefix_len = seg_ks + 1 - anchor
                observed = m[anchor : seg_ks[-1] + 1]
                eq = rows[:, : len(observed)] == observed[None, :]
                alive = np.concatenate(
                    [np.ones((len(rows), 1), dtype=bool), np.logical_and.accumulate(eq, axis=1)], axis=1
                )
                alive_k = alive[:, prefix_len]  # [R, K]
                live = alive_k.any(axis=0)
                if not live.any():
                    continue
                hit_k = alive_k & (rows[:, prefix_len] == t[seg_ks][None, :])
                local = total + seg_ks - start  # global position index
                d_k, d_r = np.nonzero(alive_k.T)
                n_k, n_r = np.nonzero(hit_k.T)
                den_pos.append(local[d_k])
                den_row.append(d_r + rows_total)
                num_pos.append(local[n_k])
                num_row.append(n_r + rows_total)
                trie_positions.extend(local[live].tolist())
                seg_of_position.extend([len(segments)] * int(live.sum()))
                segments.append(_Segment(cs, rows_total, behaviours_total))
                rows_total += len(cs.rows)
                behaviours_total += len(cs.behaviours)
            total += n - start

        p = self.params
        prev = torch.from_numpy(np.concatenate(prev_all) if prev_all else np.zeros(0, np.int64))
        tgt_np = np.concatenate(tgt_all) if tgt_all else np.zeros(0, np.int64)
        # Background: softmax over buckets given the previous token, once per distinct token.
        distinct, which = torch.unique(prev % PREV_FEATURES, return_inverse=True)
        z = p["bg_bias"] + p["bg_a"][distinct] @ p["bg_b"]
        tgt_bucket = torch.from_numpy(self.buckets.of_token[tgt_np])
        log_bg = F.log_softmax(z, dim=-1)[which, tgt_bucket]
        log_bg = log_bg - torch.from_numpy(self.buckets.log_size[self.buckets.of_token[tgt_np]])
        if not segments:
            return list(torch.split(log_bg, [len(x) for x in tgt_all]))

        weights = self._row_weights(segments)
        pos = torch.tensor(trie_positions, dtype=torch.int64)
        index = torch.full((total,), -1, dtype=torch.int64)
        index[pos] = torch.arange(len(pos))
        den_p = index[torch.from_numpy(np.concatenate(den_pos))]
        num_p = index[torch.from_numpy(np.concatenate(num_pos))]
        mass = torch.zeros(len(pos), dtype=DTYPE).index_add(
            0, den_p, weights[torch.from_numpy(np.concatenate(den_row))]
        )
        hit = torch.zeros(len(pos), dtype=DTYPE).index_add(
            0, num_p, weights[torch.from_numpy(np.concatenate(num_row))]
        )
        log_keep = F.logsigmoid(-p["gate"])[0]
        log_eps = F.logsigmoid(p["gate"])[0]
        has_hit = hit > 0
        log_trie = torch.where(
            has_hit,
            log_keep + torch.log(torch.where(has_hit, hit, torch.ones_like(hit))) - torch.log(mass),
            torch.full_like(hit, -math.inf),
        )
        mixed = torch.logaddexp(log_trie, log_eps + log_bg[pos])
        logprobs = log_bg.index_put((pos,), mixed)
        return list(torch.split(logprobs, [len(x) for x in tgt_all]))

    def _row_weights(self, segments: list[_Segment]) -> torch.Tensor:
        """Unnormalised row weights ``exp(logit - max over the row's segment)``."""
        p = self.params
        prompt_feats = np.concatenate([s.candidates.prompt_features for s in segments])
        prompt_w = np.concatenate([s.candidates.prompt_weights for s in segments])
        prompt_off = np.cumsum([0] + [len(s.candidates.prompt_features) for s in segments[:-1]])
        u = F.embedding_bag(
            torch.from_numpy(prompt_feats),
            p["lora_a"],
            torch.from_numpy(prompt_off),
            mode="sum",
            per_sample_weights=torch.from_numpy(prompt_w),
        )
        beh_feats = np.concatenate([s.candidates.behaviour_features for s in segments])
        beh_off_parts = []
        seg_of_beh = []
        feat_base = 0
        for i, s in enumerate(segments):
            beh_off_parts.append(s.candidates.behaviour_offsets + feat_base)
            feat_base += len(s.candidates.behaviour_features)
            seg_of_beh.append(np.full(len(s.candidates.behaviours), i, dtype=np.int64))
        beh_feats_t = torch.from_numpy(beh_feats)
        beh_off = torch.from_numpy(np.concatenate(beh_off_parts))
        v = F.embedding_bag(beh_feats_t, p["lora_b"], beh_off, mode="sum")
        bias = F.embedding_bag(beh_feats_t, p["behaviour_bias"][:, None], beh_off, mode="sum")[:, 0]
        shift = (u[torch.from_numpy(np.concatenate(seg_of_beh))] * v).sum(dim=1) + bias
        behaviour_of_row = np.concatenate(
            [s.candidates.behaviour_of_row + s.behaviour_offset for s in segments]
        )
        prior = torch.from_numpy(np.concatenate([s.candidates.prior for s in segments]))
        logits = prior + shift[torch.from_numpy(behaviour_of_row)]
        seg_of_row = torch.from_numpy(
            np.concatenate(
                [np.full(len(s.candidates.rows), i, dtype=np.int64) for i, s in enumerate(segments)]
            )
        )
        seg_max = torch.full((len(segments),), -math.inf, dtype=DTYPE).scatter_reduce(
            0, seg_of_row, logits.detach(), reduce="amax"
        )
        return torch.exp(logits - seg_max[seg_of_row])

    def open_turn(self, tokens: np.ndarray) -> int:
        """Where the assistant turn the sequence ends in began, or -1 (``turn_anchors`` at the end)."""
        h = len(self._header)
        starts = np.flatnonzero(tokens[: max(len(tokens) - h + 1, 0)] == self._header[0])
        for start in starts[::-1]:
            if (tokens[start : start + h] == self._header).all():
                anchor = int(start) + h
                return anchor if not np.isin(tokens[anchor:], self.closers).any() else -1
        return -1

    # ---- numpy mirror for the sampler --------------------------------------------------------
    def row_log_weights(self, cs: CandidateSet) -> np.ndarray:
        """Row logits (prior + shift) for one candidate set, in numpy, for drawing tokens."""
        cached = self._row_cache.get(id(cs))
        if cached is not None and cached[0] is cs:
            return cached[1]
        logits = self._row_log_weights(cs)
        with self._row_cache_lock:
            self._row_cache[id(cs)] = (cs, logits)
            if len(self._row_cache) > 1024:
                self._row_cache.pop(next(iter(self._row_cache)))
        return logits

    def _row_log_weights(self, cs: CandidateSet) -> np.ndarray:
        p = self.numpy_params()
        u = (p["lora_a"][cs.prompt_features] * cs.prompt_weights[:, None]).sum(axis=0)
        per_feature = p["lora_b"][cs.behaviour_features] @ u + p["behaviour_bias"][cs.behaviour_features]
        shift = np.add.reduceat(per_feature, cs.behaviour_offsets) if len(per_feature) else per_feature
        return cs.prior + shift[cs.behaviour_of_row]

    def background_logprobs(self, previous: int) -> np.ndarray:
        """log p(bucket | previous token), numpy."""
        p = self.numpy_params()
        z = p["bg_bias"] + p["bg_a"][previous % PREV_FEATURES] @ p["bg_b"]
        z = z - z.max()
        return z - np.log(np.exp(z).sum())

    def log_eps(self) -> tuple[float, float]:
        """(log(1 - eps), log(eps)) of the trie/background gate."""
        g = float(self.numpy_params()["gate"][0])
        return -math.log1p(math.exp(g)), -math.log1p(math.exp(-g))
