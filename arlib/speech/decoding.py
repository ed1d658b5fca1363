"""Decoding with a lexicon and with both heads of a hybrid CTC/attention recognizer (chapter 5).

- :func:`snap_to_lexicon`: the simplest lexicon, applied after decoding: each word of a transcript becomes
  the nearest lexicon word by character edit distance.
- :func:`lexicon_beam_search`: CTC prefix beam search (Hannun et al. 2014) whose prefixes must spell
  lexicon words, so that every transcript it returns is a sequence of lexicon words.
- :class:`CTCPrefixScorer`: the CTC prefix probability of Watanabe et al. 2017 (Algorithm 2), for many
  hypotheses and candidate labels at once.
- :func:`joint_beam_search`: one-pass joint CTC/attention beam search (Watanabe et al. 2017).
- :func:`attention_rescore`: the second pass of WeNet's U2 (Zhang et al. 2020; Yao et al. 2021): the
  attention decoder rescores CTC's n-best list in one batched forward pass.

The CTC head and the attention decoder share the token ids of :class:`~arlib.speech.models.TranscriptVocab`:
0 is CTC's blank (and the decoder's padding), 1 is EOS (the decoder's start and end symbol, never emitted
by CTC), then the units.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from arlib.speech._checks import index_tensor
from arlib.speech._checks import memory as check_memory
from arlib.speech.error_rates import edit_distance
from arlib.speech.models import BLANK, EOS, AttentionDecoder, TranscriptVocab
from arlib.validate import describe, int_in_range, is_int, is_number, number_in, positive_int, probability

__all__ = ["snap_to_lexicon", "lexicon_beam_search", "CTCPrefixScorer", "joint_beam_search", "attention_rescore"]

FLOOR = -1e4  # log-probabilities are raised to this floor (e^-10000 is 0 in float64) so that sums stay finite


def _check_log_probs(log_probs, name: str) -> torch.Tensor:
    """``log_probs`` (T, C), T >= 1, C >= 2: real log-probabilities (each row log-sum-exps to 0)."""
    if not isinstance(log_probs, torch.Tensor) or not log_probs.is_floating_point() or log_probs.dim() != 2 \
            or log_probs.shape[0] < 1 or log_probs.shape[1] < 2:
        raise ValueError(f"{name}: expected a float tensor (T, C) of log-probabilities for one utterance, "
                         f"T >= 1 and C >= 2, got {describe(log_probs)}")
    lp = log_probs.detach()
    if torch.isnan(lp).any() or (lp == math.inf).any():
        raise ValueError(f"{name}: expected log-probabilities, got NaN or +inf")
    worst = float((torch.logsumexp(lp.double(), dim=-1)).abs().max())
    if not worst <= (1e-3 if lp.dtype in (torch.float32, torch.float64) else 1e-2):
        raise ValueError(f"{name}: expected log-probabilities (each row log-sum-exps to 0, as log_softmax(-1) "
                         f"gives), got a row off by {worst:.3g}: raw logits?")
    return lp


def _check_lexicon(lexicon) -> tuple[str, ...]:
    if isinstance(lexicon, str) or not isinstance(lexicon, (list, tuple)) or not lexicon \
            or not all(isinstance(w, str) and w and not any(c.isspace() for c in w) for w in lexicon):
        raise ValueError(f"lexicon: expected a non-empty list of non-empty words without spaces, "
                         f"got {lexicon!r:.80}")
    return tuple(lexicon)


def _check_decoder(decoder) -> AttentionDecoder:
    if not isinstance(decoder, AttentionDecoder):
        raise ValueError(f"decoder: expected an arlib.speech.models.AttentionDecoder, got {type(decoder).__name__}")
    return decoder


def _one_utterance(decoder, memory, memory_lengths) -> torch.Tensor:
    memory_lengths = check_memory(memory, memory_lengths, decoder.config["d"])
    if memory.shape[0] != 1:
        raise ValueError(f"memory: expected one utterance (1, S, {decoder.config['d']}), got {tuple(memory.shape)}")
    weight = decoder.embed.weight
    if memory.dtype != weight.dtype or memory.device != weight.device:
        raise ValueError(f"memory: expected {weight.dtype} on {weight.device} (the decoder's), "
                         f"got {memory.dtype} on {memory.device}")
    if not bool(torch.isfinite(memory).all()):
        raise ValueError("memory: contains NaN or inf")
    if decoder.config["max_len"] < 2:
        raise ValueError(f"decoder: its max_len={decoder.config['max_len']} leaves no room for a label and EOS")
    return memory_lengths


def _mix(ctc_weight: float, ctc: torch.Tensor, att: torch.Tensor) -> torch.Tensor:
    """ctc_weight * ctc + (1 - ctc_weight) * att, where a weight of 0 drops its term (0 * -inf is not 0)."""
    if ctc_weight == 0:
        return att.double()
    if ctc_weight == 1:
        return ctc.double()
    return ctc_weight * ctc.double() + (1 - ctc_weight) * att.double()


# --------------------------------------------------------------------------------------------- lexicons


def snap_to_lexicon(transcript: str, lexicon) -> str:
    """Replace every word of ``transcript`` (words separated by spaces) with the lexicon word nearest to it
    by character edit distance (:func:`~arlib.speech.error_rates.edit_distance`); ties go to the word that
    comes first in ``lexicon``. ``"twu stap"`` -> ``"two stop"``. Words are rejoined with single spaces.

    A post-processing step for a character recognizer: it cannot change the number of words, and it knows
    nothing of the audio, only the spelling."""
    if not isinstance(transcript, str):
        raise ValueError(f"transcript: expected a string, got {type(transcript).__name__}")
    lexicon = _check_lexicon(lexicon)
    out = []
    for word in transcript.split():
        distances = [edit_distance(word, w) for w in lexicon]
        out.append(lexicon[distances.index(min(distances))])  # index() finds the first of the ties
    return " ".join(out)


@torch.no_grad()
def lexicon_beam_search(log_probs: torch.Tensor, vocab: TranscriptVocab, lexicon=None, beam: int = 8,
                        prune: float = -12.0) -> list[tuple[tuple[int, ...], float]]:
    """CTC prefix beam search over one utterance (T, C) constrained by a lexicon: the ``beam`` best
    transcripts made of lexicon words (``vocab.words`` by default), with their CTC log-probabilities, best
    first.

    The search is :func:`~arlib.speech.ctc.prefix_beam_search` (Hannun et al. 2014: each prefix keeps the
    probability of its paths ending in a blank and of those ending in its last label) with the lexicon as a
    prefix tree (a trie) over the characters: a prefix may grow by a letter only if its last, partial word
    stays the beginning of a lexicon word, and by a space only right after a complete lexicon word (so never
    at the start and never twice in a row). At the end, only the hypotheses whose last word is complete are
    returned (the empty transcript counts as zero words). So that one always is, each frame's pruning keeps,
    besides the ``beam`` best, the best hypothesis whose last word is complete when none of those is (a
    complete hypothesis stays complete through blanks, so one survives to the end). Labels with log y_t
    below ``prune`` are not tried at frame t, as in the unconstrained search. ``vocab`` must spell
    characters (``unit="char"``); its ids index the columns of ``log_probs``, and EOS (not a character) is
    never emitted.
    """
    if not isinstance(vocab, TranscriptVocab) or vocab.unit != "char":
        raise ValueError(f"vocab: expected a TranscriptVocab of characters (unit='char'), got "
                         f"{getattr(vocab, 'unit', type(vocab).__name__)!r}")
    lp = _check_log_probs(log_probs, "log_probs")
    if lp.shape[1] != vocab.size:
        raise ValueError(f"log_probs: expected {vocab.size} columns (the vocab's size), got {tuple(lp.shape)}")
    words = _check_lexicon(vocab.words if lexicon is None else lexicon)
    unknown = sorted(set("".join(words)) - set(vocab.chars))
    if unknown:
        raise ValueError(f"lexicon: characters {unknown} are not in the vocab's alphabet {vocab.chars!r}")
    positive_int(beam, "beam")
    number_in(prune, "prune", -math.inf, math.inf, expected="a number (a log-probability threshold)")
    spelled = [tuple(vocab.encode(w, strict=False)) for w in words]
    complete = set(spelled)
    starts = {w[:i] for w in spelled for i in range(len(w) + 1)}  # the trie, as the set of its nodes
    space = vocab.encode(" ", strict=False)[0]

    def grow(word: tuple, c: int):
        """The partial word after label c, or None where the lexicon forbids c."""
        if c == space:
            return () if word in complete else None
        return word + (c,) if word + (c,) in starts else None

    x = lp.double().cpu().numpy()
    T, C = x.shape
    beams = {(): (0.0, -math.inf)}  # prefix -> (log p ending in a blank, log p ending in its last label)
    partial = {(): ()}  # prefix -> its last, partial word

    def is_done(prefix) -> bool:
        """Whether the prefix is a whole transcript: no words, or a complete last word."""
        return not prefix or partial[prefix] in complete
    for t in range(T):
        labels = [c for c in range(C) if c == BLANK or (x[t, c] > prune and c != EOS)]
        nxt: dict = {}
        for prefix, (pb, pnb) in beams.items():
            total, word = _lse(pb, pnb), partial[prefix]
            for c in labels:
                p = x[t, c]
                if c == BLANK:
                    _add(nxt, prefix, total + p, -math.inf)
                    continue
                if prefix and prefix[-1] == c:
                    _add(nxt, prefix, -math.inf, pnb + p)  # a repeat without a blank merges into the prefix
                    before = pb  # only a blank in between makes a new label
                else:
                    before = total
                new = grow(word, c)
                if new is not None and before > -math.inf:
                    partial[prefix + (c,)] = new
                    _add(nxt, prefix + (c,), -math.inf, before + p)
        ranked = sorted(nxt.items(), key=lambda kv: -_lse(*kv[1]))
        kept = ranked[:beam]
        if not any(is_done(prefix) for prefix, _ in kept):  # keep one that could end here (see docstring)
            kept += [next(kv for kv in ranked if is_done(kv[0]))]
        beams = dict(kept)
    scored = [(prefix, _lse(*s)) for prefix, s in beams.items()]
    return [h for h in scored if is_done(h[0])]


def _add(table: dict, prefix: tuple, pb: float, pnb: float) -> None:
    """Merge a prefix's path probabilities (log, ending in a blank / in its last label) into ``table``."""
    if pb == -math.inf and pnb == -math.inf:
        return  # an impossible extension
    old_b, old_nb = table.get(prefix, (-math.inf, -math.inf))
    table[prefix] = (_lse(old_b, pb), _lse(old_nb, pnb))


def _lse(a: float, b: float) -> float:
    """log(e^a + e^b) for floats, -inf allowed (numpy's logaddexp, as a Python float)."""
    return float(np.logaddexp(a, b))


# ------------------------------------------------------------------------------------ CTC prefix score


class CTCPrefixScorer:
    """The CTC prefix score of Watanabe et al. 2017 ("Hybrid CTC/attention architecture for end-to-end
    speech recognition", Algorithm 2) over one utterance's log-probabilities ``log_probs`` (T, C).

    For a prefix g (without the start symbol), gamma^n_t(g) and gamma^b_t(g) are the probabilities that
    frames 1..t collapse to g, the path ending in g's last label or in a blank. Extending g by a label c
    (h = g c) follows the recursions (for t = 1..T; gamma_0 is 0 but gamma^b_0 of the empty prefix, 1)::

        phi_t         = gamma^b_t(g) + [last(g) != c] gamma^n_t(g)
        gamma^n_t(h)  = (gamma^n_{t-1}(h) + phi_{t-1}) y_t(c)
        gamma^b_t(h)  = (gamma^b_{t-1}(h) + gamma^n_{t-1}(h)) y_t(blank)
        psi(h)        = sum_{t=1..T} phi_{t-1} y_t(c)

    psi(h) is the probability of every label sequence that starts with h (h itself and all its
    continuations), the path's first frame of c's new run being the t of the sum. For c = EOS the score is
    the probability of g as the whole transcript, gamma^n_T(g) + gamma^b_T(g) (Graves et al.'s p(g | x)).

    The paper runs these recursions frame by frame; here (the book's variant, the same values) each is
    solved in closed form, since both are first-order and linear, gamma_t = (gamma_{t-1} + u_{t-1}) y_t:
    with A_t = log y_1(c) + ... + log y_t(c), it is
    log gamma^n_t(h) = A_t + logcumsumexp_{s <= t}(log phi_{s-1} - A_{s-1}), and the same for gamma^b
    with the blank's sums. So there is no loop over frames, and one
    call scores B hypotheses by K candidate labels at once (batching them as Seki et al. 2019,
    "Vectorized beam search for CTC-attention-based speech recognition", do), in float64, since the
    closed form subtracts large sums. Log-probabilities below -1e4 (log 0, say) are raised to -1e4.

    A state is the tensor (T + 1, 2, B) of log gamma^n_t and log gamma^b_t (t = 0..T) of B prefixes.
    """

    def __init__(self, log_probs: torch.Tensor, blank: int = BLANK, eos: int = EOS):
        lp = _check_log_probs(log_probs, "log_probs")
        T, C = lp.shape
        self.blank = int_in_range(blank, "blank", 0, C - 1)
        self.eos = int_in_range(eos, "eos", 0, C - 1)
        if self.eos == self.blank:
            raise ValueError(f"eos: expected an id other than the blank {blank}, got {eos!r}")
        self.x = lp.double().clamp_min(FLOOR)  # (T, C) log y_t(c)
        self.T, self.C = T, C
        zero = self.x.new_zeros(1)
        self.blank_sum = torch.cat([zero, self.x[:, self.blank].cumsum(0)])  # (T + 1,) sum of log y(blank)

    def initial_state(self) -> torch.Tensor:
        """The state (T + 1, 2, 1) of the empty prefix: no label yet (log gamma^n = -inf), blanks only."""
        r = torch.full((self.T + 1, 2, 1), -math.inf, dtype=torch.float64, device=self.x.device)
        r[:, 1, 0] = self.blank_sum
        return r

    def extend(self, state: torch.Tensor, last: torch.Tensor, candidates: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Log prefix scores (B, K) of every prefix of ``state`` (T + 1, 2, B), whose last labels are
        ``last`` (B,) (any id, EOS say, for the empty prefix), extended by each of ``candidates`` (B, K);
        and the extended prefixes' states (T + 1, 2, B, K). A candidate EOS scores the prefix as a whole
        transcript (its state is then meaningless). Candidates may not be the blank."""
        if not isinstance(state, torch.Tensor) or state.dtype != torch.float64 or state.dim() != 3 \
                or state.shape[:2] != (self.T + 1, 2) or torch.isnan(state).any() or (state > 1e-6).any():
            raise ValueError(f"state: expected a float64 tensor ({self.T + 1}, 2, B) of log-probabilities "
                             f"(from initial_state or extend), got {describe(state)}")
        B = state.shape[2]
        if not index_tensor(last) or last.shape != (B,):
            raise ValueError(f"last: expected an integer tensor ({B},) of ids, got {describe(last)}")
        if not index_tensor(candidates) or candidates.dim() != 2 or candidates.shape[0] != B \
                or (candidates.numel() and (candidates.min() < 0 or candidates.max() >= self.C
                                            or (candidates == self.blank).any())):
            raise ValueError(f"candidates: expected an integer tensor ({B}, K) of ids in [0, {self.C}) other "
                             f"than the blank {self.blank}, got {describe(candidates)}")
        return self._extend(state, last.to(state.device).long(), candidates.to(state.device).long())

    def _extend(self, r: torch.Tensor, last: torch.Tensor, cand: torch.Tensor):
        """:meth:`extend` without the checks (the beam search's inner loop)."""
        B, K = cand.shape
        y = self.x[:, cand]  # (T, B, K) log y_t(c)
        gn, gb = r[:, 0, :, None], r[:, 1, :, None]  # (T + 1, B, 1) of g
        phi = torch.where(cand == last[:, None], gb, torch.logaddexp(gn, gb))  # (T + 1, B, K)
        A = torch.cat([y.new_zeros(1, B, K), y.cumsum(0)])  # (T + 1, B, K)
        new = torch.full((self.T + 1, 2, B, K), -math.inf, dtype=torch.float64, device=r.device)
        new[1:, 0] = A[1:] + torch.logcumsumexp(phi[:-1] - A[:-1], dim=0)  # log gamma^n_t(h), t >= 1
        Sb = self.blank_sum[:, None, None]  # (T + 1, 1, 1)
        new[1:, 1] = Sb[1:] + torch.logcumsumexp(new[:-1, 0] - Sb[:-1], dim=0)  # log gamma^b_t(h)
        psi = torch.logsumexp(phi[:-1] + y, dim=0)  # (B, K)
        whole = torch.logaddexp(r[-1, 0], r[-1, 1])[:, None].expand(B, K)  # log p(g | x), for EOS
        return torch.where(cand == self.eos, whole, psi), new

    def score(self, labels) -> float:
        """log psi(labels) of a label sequence (a list of ids), by :meth:`extend` one label at a time; a
        final EOS makes it log p(labels | x), the CTC probability of the whole transcript. The empty prefix
        scores 0."""
        if isinstance(labels, torch.Tensor):
            labels = labels.tolist() if index_tensor(labels) and labels.dim() == 1 else None
        if not isinstance(labels, (list, tuple)) or not all(is_int(c) and 0 <= c < self.C and c != self.blank
                                                            for c in labels) or self.eos in labels[:-1]:
            raise ValueError(f"labels: expected a list of ids in [0, {self.C}) other than the blank {self.blank}, "
                             f"EOS ({self.eos}) only at the end, got {labels!r:.80}")
        r, last, out = self.initial_state(), self.eos, 0.0
        for c in labels:
            psi, r = self._extend(r, torch.tensor([last], device=r.device), torch.tensor([[c]], device=r.device))
            out, r, last = float(psi[0, 0]), r[..., 0], c
        return out


# --------------------------------------------------------------------------------------- joint search


@torch.no_grad()
def joint_beam_search(decoder: AttentionDecoder, memory: torch.Tensor, memory_lengths, ctc_log_probs: torch.Tensor,
                      beam: int = 4, ctc_weight: float = 0.3, max_len: int | None = None,
                      pre_beam: int | None = None) -> list[tuple[list[int], float]]:
    """One-pass joint CTC/attention beam search for one utterance (Watanabe et al. 2017, joint decoding):
    the attention decoder proposes the next label, and every hypothesis h is scored by::

        ctc_weight * log psi_ctc(h) + (1 - ctc_weight) * log p_att(h | x)

    with psi the CTC prefix probability (:class:`CTCPrefixScorer`), so that CTC's monotonic alignment
    vetoes what the attention decoder invents or drops (a label the audio cannot hold, an early EOS).
    ``memory`` (1, S, d) is the encoder's output and ``ctc_log_probs`` (T, V) the CTC head's over the same
    ids as the decoder. Returns finished hypotheses (labels, score) best first, like
    :meth:`~arlib.speech.models.AttentionDecoder.beam_search`, whose loop this is: the beams are a batch
    sharing the decoder's KV cache, each step keeps the ``beam`` best extensions, an EOS finishes a
    hypothesis, and the search stops once ``beam`` have finished and none alive scores above the best.

    For speed, CTC scores only the attention decoder's ``pre_beam`` most probable next labels of each
    hypothesis (ESPnet's pre-beam; ``int(1.5 * beam)`` by default), except with ``ctc_weight=1``, where
    the attention has no say and every label is scored. The blank is never proposed. With ``ctc_weight=0``
    and ``pre_beam >= 2 * beam`` this is the attention decoder's own beam search, whose ``2 * beam`` best
    extensions per step then all lie in the pre-beam. ``max_len`` (decoder steps, EOS included) defaults
    to T + 1, capped by the decoder's ``max_len - 1``: CTC cannot emit more labels than frames. Call
    ``decoder.eval()`` first (dropout stays on otherwise).
    """
    decoder = _check_decoder(decoder)
    memory_lengths = _one_utterance(decoder, memory, memory_lengths)
    lp = _check_log_probs(ctc_log_probs, "ctc_log_probs")
    V = decoder.config["vocab_size"]
    if lp.shape[1] != V:
        raise ValueError(f"ctc_log_probs: expected {V} columns (the decoder's vocab_size), got {tuple(lp.shape)}")
    positive_int(beam, "beam")
    ctc_weight = probability(ctc_weight, "ctc_weight")
    T, top = lp.shape[0], decoder.config["max_len"] - 1
    max_len = min(T + 1, top) if max_len is None else int_in_range(max_len, "max_len", 1, top)
    if pre_beam is None:
        pre_beam = V - 1 if ctc_weight == 1 else min(V - 1, max(1, int(1.5 * beam)))
    K = int_in_range(pre_beam, "pre_beam", 1, V - 1, expected=f"an int in [1, {V - 1}] (labels other than blank)")
    scorer = CTCPrefixScorer(lp.to(memory.device), BLANK, EOS)
    device = memory.device
    memory, memory_lengths = memory.expand(beam, -1, -1), memory_lengths.expand(beam)
    cache = decoder.new_cache(memory)
    seqs = torch.full((beam, 1), EOS, device=device)  # (beam, 1 + steps)
    att = torch.zeros(beam, device=device, dtype=memory.dtype)  # log p_att of each hypothesis
    alive = torch.zeros(beam, dtype=torch.bool, device=device)
    alive[0] = True  # all beams start identical: keep one alive
    r = scorer.initial_state().expand(-1, -1, beam)  # (T + 1, 2, beam)
    every = torch.arange(1, V, device=device).expand(beam, -1) if K == V - 1 else None
    keep: list = []
    finished: list[tuple[list[int], float]] = []
    for _ in range(max_len):
        logp = decoder(seqs[:, -1:], memory, memory_lengths, cache, validate=False)[:, -1].log_softmax(-1)
        logp[:, BLANK] = -math.inf  # (beam, V)
        cand = every if every is not None else logp.topk(K, dim=-1).indices  # (beam, K), the pre-beam
        att_c = att[:, None] + logp.gather(1, cand)  # (beam, K)
        if ctc_weight > 0:
            ctc_c, r_c = scorer._extend(r, seqs[:, -1], cand)  # (beam, K), (T + 1, 2, beam, K)
        else:  # attention alone: no CTC to compute
            ctc_c, r_c = att_c, r[..., None].expand(-1, -1, -1, K)
        total = _mix(ctc_weight, ctc_c, att_c).masked_fill(~alive[:, None], -math.inf).flatten()
        best, idx = total.topk(min(2 * beam, total.numel()))
        keep, labels = [], cand.tolist()
        for s, i in zip(best.tolist(), idx.tolist()):
            if s == -math.inf:
                break
            o, k = divmod(i, K)
            if labels[o][k] == EOS:
                finished.append((seqs[o, 1:].tolist(), s))
            elif len(keep) < beam:
                keep.append((o, k, s))
        if not keep or (len(finished) >= beam and max(f[1] for f in finished) >= keep[0][2]):
            break
        alive = torch.tensor([j < len(keep) for j in range(beam)], device=device)
        keep += [keep[0]] * (beam - len(keep))  # pad with dead copies
        order = torch.tensor([o for o, _, _ in keep], device=device)
        kk = torch.tensor([k for _, k, _ in keep], device=device)
        cache.reorder(order)
        seqs = torch.cat([seqs[order], cand[order, kk][:, None]], dim=1)
        att = att_c[order, kk]
        r = r_c[:, :, order, kk]
    if not finished:  # max_len ran out first: the best unfinished hypothesis
        finished = [(seqs[0, 1:].tolist(), keep[0][2] if keep else -math.inf)]
    return sorted(finished, key=lambda f: -f[1])


# ------------------------------------------------------------------------------------------ rescoring


@torch.no_grad()
def attention_rescore(decoder: AttentionDecoder, memory: torch.Tensor, memory_lengths, nbest,
                      ctc_weight: float = 0.5) -> list[tuple[tuple[int, ...], float, float, float]]:
    """Attention rescoring, the second pass of WeNet's U2 (Zhang et al. 2020, "Unified streaming and
    non-streaming two-pass end-to-end model for speech recognition"; Yao et al. 2021, WeNet): CTC's n-best
    list ``nbest`` (pairs of labels and CTC log-probability, as :func:`~arlib.speech.ctc.prefix_beam_search`
    returns) is scored by the attention decoder, teacher-forced on each hypothesis followed by EOS, all of
    them in one batched forward pass (padded, the causal mask keeping the padding out of the real
    positions). ``memory`` (1, S, d) is the encoder's output. Returns (labels, combined, CTC score,
    attention score) best first, with::

        combined = ctc_weight * log p_ctc(y | x) + (1 - ctc_weight) * log p_att(y, EOS | x).

    (WeNet adds ``ctc_weight * ctc`` to the attention score, which ranks as this does with the weight
    w / (1 + w).) An empty hypothesis is scored as EOS alone. Call ``decoder.eval()`` first.
    """
    decoder = _check_decoder(decoder)
    memory_lengths = _one_utterance(decoder, memory, memory_lengths)
    ctc_weight = probability(ctc_weight, "ctc_weight")
    V, top = decoder.config["vocab_size"], decoder.config["max_len"] - 1
    if isinstance(nbest, (str, dict)) or not isinstance(nbest, (list, tuple)) or not nbest:
        raise ValueError(f"nbest: expected a non-empty list of (labels, CTC log-probability) pairs, "
                         f"got {type(nbest).__name__}")
    hyps = []
    for i, item in enumerate(nbest):
        ids, score = item if isinstance(item, (list, tuple)) and len(item) == 2 else (None, None)
        ids = ids.tolist() if isinstance(ids, torch.Tensor) and ids.dim() == 1 and index_tensor(ids) else ids
        if not isinstance(ids, (list, tuple)) or not all(is_int(c) and EOS < c < V for c in ids) or len(ids) > top:
            raise ValueError(f"nbest[{i}]: expected (labels, log p) with at most {top} labels, ids in "
                             f"[{EOS + 1}, {V}) (no blank, no EOS), got {item!r:.80}")
        if not is_number(score) or math.isnan(score) or score > 1e-6:
            raise ValueError(f"nbest[{i}]: expected a log-probability <= 0 (-inf allowed), got {score!r}")
        hyps.append((tuple(int(c) for c in ids), float(score)))
    N, U = len(hyps), max(len(ids) for ids, _ in hyps) + 1
    device = memory.device
    inputs = torch.full((N, U), BLANK, dtype=torch.long)  # EOS (as <s>), y, padding
    targets = torch.full((N, U), BLANK, dtype=torch.long)  # y, EOS, padding
    inputs[:, 0] = EOS
    for n, (ids, _) in enumerate(hyps):
        inputs[n, 1:len(ids) + 1] = torch.tensor(ids, dtype=torch.long)
        targets[n, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        targets[n, len(ids)] = EOS
    inputs, targets = inputs.to(device), targets.to(device)
    logits = decoder(inputs, memory.expand(N, -1, -1), memory_lengths.expand(N), validate=False)  # (N, U, V)
    token = logits.log_softmax(-1).gather(2, targets[..., None])[..., 0].double()  # (N, U)
    real = torch.arange(U, device=device) <= torch.tensor([len(ids) for ids, _ in hyps], device=device)[:, None]
    att = torch.where(real, token, torch.zeros_like(token)).sum(1)  # (N,) log p_att(y, EOS | x)
    ctc = torch.tensor([s for _, s in hyps], dtype=torch.float64, device=device)
    combined = _mix(ctc_weight, ctc, att)
    rows = [(ids, float(c), s, float(a)) for (ids, s), c, a in zip(hyps, combined.tolist(), att.tolist())]
    return sorted(rows, key=lambda row: -row[1])  # stable: ties keep the n-best's order
