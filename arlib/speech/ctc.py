"""Connectionist temporal classification (Graves et al. 2006): the loss, decoding and alignment.

A CTC model emits, at every frame t, a distribution y_t over the labels plus a *blank*. A path is one
symbol per frame; the collapse map B removes repeats, then blanks ("hh_e_ll_llo" -> "hello"). The
probability of a transcript l sums over every path that collapses to it, computed by the forward
recursion over the blank-interleaved label l' = (_, l_1, _, l_2, ..., l_U, _) of length S = 2U + 1
(Graves et al. 2006, eq. 6-8):

    a_t(s) = [a_{t-1}(s) + a_{t-1}(s-1) + [l'_s != _ and l'_s != l'_{s-2}] a_{t-1}(s-2)] y_t(l'_s),
    p(l | x) = a_T(S) + a_T(S-1)                                        (1-based s)

All functions work in log space and batch over utterances; frames past an utterance's length are
ignored. Label 0 is the blank unless ``blank`` says otherwise.

The loss, the forward recursion, the Viterbi alignment and the prefix beam search require
log-probabilities: each frame's row must log-sum-exp to 0 within 1e-3 (1e-2 in half precision), checked
once per call, so raw logits are refused rather than scored (apply ``log_softmax(-1)`` first). Frames past
an utterance's length are not checked (padding may hold anything). :func:`greedy_decode` reads only the
argmax and takes unnormalized scores.
"""

from __future__ import annotations

import math

import torch

from arlib.speech._checks import index_tensor as _index_tensor
from arlib.speech._checks import lengths as _lengths
from arlib.validate import describe, int_at_least, int_in_range, is_int, number_in, positive_int

NEG = -1e30  # "log 0" that keeps gradients finite (exp(NEG - NEG) is 1, not nan as with -inf)


def _check_log_probs(log_probs, dim: int, what: str, input_lengths: torch.Tensor | None = None,
                     normalized: bool = True) -> None:
    """``log_probs`` must be a float tensor of ``dim`` dimensions without NaN or +inf and, if ``normalized``,
    hold log-probabilities: every frame's row (those below ``input_lengths`` when given) log-sum-exps to 0
    (within 1e-3, 1e-2 in half precision). One pass over the tensor per call."""
    if not isinstance(log_probs, torch.Tensor) or log_probs.dim() != dim or not log_probs.is_floating_point():
        raise ValueError(f"log_probs: expected a float tensor {what} of log-probabilities, got {describe(log_probs)}")
    if not log_probs.numel():
        return
    lp = log_probs.detach()
    if torch.isnan(lp).any() or (lp == math.inf).any():
        raise ValueError("log_probs: expected log-probabilities, got NaN or +inf")
    if not normalized:
        return
    lse = torch.logsumexp(lp, dim=-1)  # (..., T)
    if input_lengths is not None:
        lse = lse[torch.arange(lp.shape[-2], device=lp.device) < input_lengths[:, None]]
    tol = 1e-3 if lp.dtype in (torch.float32, torch.float64) else 1e-2
    worst = float(lse.abs().max()) if lse.numel() else 0.0
    if not worst <= tol:
        raise ValueError(f"log_probs: expected log-probabilities (each frame's row log-sum-exps to 0, as "
                         f"log_softmax(-1) gives), got a row whose log-sum-exp is off by {worst:.3g}: raw logits?")


def _check_blank(blank, C: int) -> int:
    return int_in_range(blank, "blank", 0, C - 1, expected=f"an index in [0, {C}) (C = {C} classes)")


def _check(log_probs, input_lengths, targets, target_lengths, blank):
    if not isinstance(log_probs, torch.Tensor) or log_probs.dim() != 3 or not log_probs.is_floating_point():
        raise ValueError(f"log_probs: expected a float tensor (B, T, C) of log-probabilities, "
                         f"got {describe(log_probs)}")
    B, T, C = log_probs.shape
    _check_blank(blank, C)
    input_lengths = _lengths(input_lengths, "input_lengths", B, 1, T, log_probs.device)
    _check_log_probs(log_probs, 3, "(B, T, C)", input_lengths)
    if not _index_tensor(targets) or targets.dim() != 2 or targets.shape[0] != B:
        raise ValueError(f"targets: expected an integer tensor (B={B}, U) of padded label indices, "
                         f"got {describe(targets)}")
    target_lengths = _lengths(target_lengths, "target_lengths", B, 0, targets.shape[1], log_probs.device)
    targets = targets.long().to(log_probs.device)
    valid = torch.arange(targets.shape[1], device=targets.device) < target_lengths[:, None]  # (B, U)
    if ((targets == blank) & valid).any() or ((targets < 0) | (targets >= C))[valid].any():
        raise ValueError(f"targets: expected labels in [0, {C}) other than the blank {blank}")
    return input_lengths, targets, target_lengths


def interleave_blanks(targets: torch.Tensor, blank: int = 0) -> torch.Tensor:
    """l -> l' = (_, l_1, _, ..., l_U, _): (B, U) -> (B, 2U + 1)."""
    if not _index_tensor(targets) or targets.dim() != 2:
        raise ValueError(f"targets: expected an integer tensor (B, U) of label indices, got {describe(targets)}")
    int_at_least(blank, "blank", 0)
    B, U = targets.shape
    ext = torch.full((B, 2 * U + 1), blank, dtype=torch.long, device=targets.device)
    ext[:, 1::2] = targets
    return ext


def ctc_forward(log_probs: torch.Tensor, input_lengths, targets: torch.Tensor, target_lengths,
                blank: int = 0) -> torch.Tensor:
    """log p(l | x) for each utterance by the forward recursion (eq. 6-8): (B,). ``-inf``-like
    (below -1e29) where no path of the allowed length exists."""
    input_lengths, targets, target_lengths = _check(log_probs, input_lengths, targets, target_lengths, blank)
    B, T, _ = log_probs.shape
    ext = interleave_blanks(targets, blank)  # (B, S)
    S = ext.shape[1]
    emit = log_probs.gather(2, ext[:, None, :].expand(B, T, S))  # (B, T, S): log y_t(l'_s)
    # The skip from s-2 is allowed into a label that differs from the label two back.
    skip = torch.zeros(B, S, dtype=torch.bool, device=ext.device)
    skip[:, 2:] = (ext[:, 2:] != blank) & (ext[:, 2:] != ext[:, :-2])
    neg = torch.full((B, S), NEG, dtype=log_probs.dtype, device=log_probs.device)
    alpha = neg.clone()
    alpha[:, 0] = emit[:, 0, 0]
    if S > 1:
        alpha[:, 1] = emit[:, 0, 1]
    for t in range(1, T):
        stay = alpha
        step = torch.cat([neg[:, :1], alpha[:, :-1]], dim=1)  # a_{t-1}(s-1)
        jump = torch.where(skip, torch.cat([neg[:, :2], alpha[:, :-2]], dim=1), neg)  # a_{t-1}(s-2)
        new = torch.logsumexp(torch.stack([stay, step, jump]), dim=0) + emit[:, t]
        alpha = torch.where((t < input_lengths)[:, None], new, alpha)  # finished utterances keep a_T
    end = 2 * target_lengths  # index of the final blank, S_b - 1
    last = alpha.gather(1, end[:, None]).squeeze(1)
    before = alpha.gather(1, (end - 1).clamp_min(0)[:, None]).squeeze(1)
    before = torch.where(target_lengths > 0, before, torch.full_like(before, NEG))
    return torch.logaddexp(last, before)


def ctc_loss(log_probs: torch.Tensor, input_lengths, targets: torch.Tensor, target_lengths, blank: int = 0,
             reduction: str = "mean", zero_infinity: bool = False) -> torch.Tensor:
    """-log p(l | x) with ``torch.nn.functional.ctc_loss``'s conventions, but batch-first (B, T, C):
    ``"mean"`` divides each loss by its target length (at least 1) and averages; ``"sum"``; ``"none"``."""
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction: expected 'mean', 'sum' or 'none', got {reduction!r}")
    if not isinstance(zero_infinity, bool):
        raise ValueError(f"zero_infinity: expected a bool, got {zero_infinity!r}")
    nll = -ctc_forward(log_probs, input_lengths, targets, target_lengths, blank)  # (B,)
    impossible = nll > -NEG / 10
    if zero_infinity:
        nll = torch.where(impossible, torch.zeros_like(nll), nll)
    else:
        nll = torch.where(impossible, torch.full_like(nll, math.inf), nll)
    if reduction == "none":
        return nll
    if reduction == "sum":
        return nll.sum()
    lengths = _lengths(target_lengths, "target_lengths", len(nll), 0, targets.shape[1], nll.device).clamp_min(1)
    return (nll / lengths).mean()


def greedy_decode(log_probs: torch.Tensor, input_lengths=None, blank: int = 0) -> list[list[int]]:
    """Best path: the argmax label per frame, repeats collapsed, blanks removed. (B, T, C) -> B label lists.

    Only the argmax is read, so scores need not be normalized (logits do); NaN is refused."""
    _check_log_probs(log_probs, 3, "(B, T, C)", normalized=False)
    B, T, C = log_probs.shape
    _check_blank(blank, C)
    lengths = [T] * B if input_lengths is None else \
        _lengths(input_lengths, "input_lengths", B, 0, T, log_probs.device).tolist()
    best = log_probs.argmax(dim=-1)  # (B, T)
    new = torch.ones_like(best, dtype=torch.bool)
    new[:, 1:] = best[:, 1:] != best[:, :-1]  # first frame of each run
    keep = (new & (best != blank)).cpu()
    best = best.cpu()
    return [best[b, :lengths[b]][keep[b, :lengths[b]]].tolist() for b in range(B)]


def prefix_beam_search(log_probs: torch.Tensor, beam: int = 8, blank: int = 0, prune: float = -12.0
                       ) -> list[tuple[tuple[int, ...], float]]:
    """CTC prefix beam search over one utterance (T, C): the ``beam`` best transcripts with their log
    probabilities, best first.

    Each prefix keeps two scores: paths ending in a blank and paths ending in its last label, because
    a repeated label extends the prefix only after a blank ("a_a" -> "aa") and merges into it otherwise
    ("aa" -> "a"). Labels with log y_t below ``prune`` are not tried at frame t (a speed-up only).
    """
    _check_log_probs(log_probs, 2, "(T, C) for one utterance")
    positive_int(beam, "beam")
    _check_blank(blank, log_probs.shape[1])
    number_in(prune, "prune", -math.inf, math.inf, expected="a number (a log-probability threshold)")
    lp = log_probs.detach().double().cpu().numpy()
    T, C = lp.shape
    beams = {(): (0.0, -math.inf)}  # prefix -> (log p ending in blank, log p ending in a label)
    for t in range(T):
        candidates = [c for c in range(C) if lp[t, c] > prune or c == blank]
        nxt: dict = {}
        add = _adder(nxt)
        for prefix, (pb, pnb) in beams.items():
            total = _lse(pb, pnb)
            for c in candidates:
                p = lp[t, c]
                if c == blank:
                    add(prefix, total + p, -math.inf)
                elif prefix and prefix[-1] == c:
                    add(prefix, -math.inf, pnb + p)  # repeat without a blank: same prefix
                    add(prefix + (c,), -math.inf, pb + p)  # after a blank: a new label
                else:
                    add(prefix + (c,), -math.inf, total + p)
        beams = dict(sorted(nxt.items(), key=lambda kv: -_lse(*kv[1]))[:beam])
    return [(prefix, _lse(*scores)) for prefix, scores in beams.items()]


def _adder(table: dict):
    """add(prefix, log p_blank, log p_label): merge a prefix's path probabilities into ``table``."""
    def add(prefix, pb, pnb):
        if pb == -math.inf and pnb == -math.inf:
            return  # an impossible extension (a repeat with no blank before it)
        old_b, old_nb = table.get(prefix, (-math.inf, -math.inf))
        table[prefix] = (_lse(old_b, pb), _lse(old_nb, pnb))
    return add


def _lse(a: float, b: float) -> float:
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    m = max(a, b)
    return m + math.log(math.exp(a - m) + math.exp(b - m))


def viterbi_align(log_probs: torch.Tensor, target: torch.Tensor, blank: int = 0) -> torch.Tensor:
    """The most probable CTC path for a known transcript: (T, C), (U,) -> (T,) index into l' per frame
    (even: a blank, odd 2u+1: label u). Max-product version of the forward recursion with back-pointers;
    CASS-NAT (Fan et al. 2021) cuts the encoder output into token segments with it."""
    if not isinstance(log_probs, torch.Tensor) or log_probs.dim() != 2:
        raise ValueError(f"log_probs: expected a float tensor (T, C) for one utterance, got {describe(log_probs)}")
    if not isinstance(target, torch.Tensor):
        try:
            target = torch.tensor(list(target), dtype=torch.long) if all(is_int(t) for t in target) else None
        except TypeError:
            target = None
    if not _index_tensor(target) or target.dim() != 1:
        raise ValueError(f"target: expected a 1-D integer tensor (or list of ints) of labels, got {describe(target)}")
    target = target.long()
    _check(log_probs[None], [log_probs.shape[0]], target[None], [len(target)], blank)
    T = log_probs.shape[0]
    ext = interleave_blanks(target[None].to(log_probs.device), blank)[0]  # (S,)
    S = len(ext)
    if T < len(target) + int((target[1:] == target[:-1]).sum()):
        raise ValueError(f"log_probs: {T} frames cannot hold {len(target)} labels and their repeats")
    emit = log_probs[:, ext].double().cpu()  # (T, S)
    skip = torch.zeros(S, dtype=torch.bool)
    skip[2:] = (ext[2:] != blank).cpu() & (ext[2:] != ext[:-2]).cpu()
    score = torch.full((S,), -math.inf, dtype=torch.float64)
    score[0] = emit[0, 0]
    if S > 1:
        score[1] = emit[0, 1]
    back = torch.zeros(T, S, dtype=torch.long)
    arange = torch.arange(S)
    for t in range(1, T):
        options = torch.full((3, S), -math.inf, dtype=torch.float64)
        options[0] = score
        options[1, 1:] = score[:-1]
        options[2, 2:] = torch.where(skip[2:], score[:-2], torch.tensor(-math.inf, dtype=torch.float64))
        best, which = options.max(dim=0)
        score = best + emit[t]
        back[t] = arange - which
    s = S - 1 if S == 1 or score[S - 1] >= score[S - 2] else S - 2
    path = torch.empty(T, dtype=torch.long)
    for t in range(T - 1, -1, -1):
        path[t] = s
        s = int(back[t, s])
    return path


def token_segments(path: torch.Tensor, num_tokens: int) -> list[tuple[int, int]]:
    """From a Viterbi path over l' to each token's frames: [start, end) per token (a token's segment is
    the frames labelled with it; CASS-NAT widens them to the blank frames that follow)."""
    if not _index_tensor(path) or path.dim() != 1:
        raise ValueError(f"path: expected a 1-D integer tensor (viterbi_align's output), got {describe(path)}")
    int_at_least(num_tokens, "num_tokens", 0)
    segments = []
    for u in range(num_tokens):
        frames = (path == 2 * u + 1).nonzero().flatten()
        if len(frames) == 0:
            raise ValueError(f"path: token {u} has no frame")
        segments.append((int(frames[0]), int(frames[-1]) + 1))
    return segments
