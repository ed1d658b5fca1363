"""CASS-NAT (Fan et al. 2021): a CTC alignment cuts the encoder's frames into token segments, and one
parallel decoder pass reads them.

A CTC head over the encoder gives an *alignment*, one label or blank per frame. It tells (a) how many
tokens the transcript has and (b) where each of them sits in time. CASS-NAT turns each token's stretch
of frames into a *token-level acoustic embedding* (TAE): a query for token position u (the sinusoidal
encoding of u) attends only to the frames of u's segment, the *trigger mask*. The TAEs take the place of
the word embeddings of an autoregressive decoder, which then predicts every token at once: self-attention
over the tokens without a causal mask, cross-attention to the whole encoder output.

**Segments (the trigger mask).** A token's *trigger* is the first frame of its run of labels in the
alignment, ``s_u``. Token u's segment runs from the frame after the previous token's trigger up to and
including its own: ``[s_{u-1} + 1, s_u + 1)``, with ``s_{-1} = -1``. It holds the blanks (and the
previous token's repeated frames) before the token's spike, and the spike. This is the mask the authors'
implementation builds from the alignment. The frames after the last trigger, ``[s_{U-1} + 1, T)``, are
the segment of one more position, which the decoder learns to fill with EOS (the paper's decoder ends
with <eos>); if no frame is left for it, it reads the last frame. So the U + 1 segments partition the
utterance's frames, in order. The improved CASS-NAT (Fan et al., Interspeech 2021) *expands* every
trigger mask by ``expand`` frames on each side (the authors' recipes use one), so that an alignment a
frame off still covers the token.

**Where the alignment comes from.**

- Training: the Viterbi (forced) alignment of the transcript through the CTC posteriors
  (:func:`viterbi_segments`; :func:`forced_segments` aligns a whole data set at once, which pays when the
  encoder is frozen: compute it once, not at every step).
- Inference: the CTC best path, the argmax label of every frame (:func:`ctc_segments`). It fixes the
  number of tokens the decoder emits.
- Error-based sampling alignment (ESA, Fan et al. 2021; :func:`esa_segments`): where the CTC head is
  sure (its best label's probability is at least a threshold, 0.9 in the paper) the frame keeps its best
  label; elsewhere, where the best path's errors are, the label is drawn uniformly from the two most
  probable. The paper decodes several such alignments in parallel at inference and lets an
  autoregressive model (its autoregressive baseline, or a language model) pick the best result.

**ESA in training (the book's variant).** :meth:`CassNAT.loss` with ``sample > 0`` replaces an
utterance's Viterbi segments, with that probability, by those of an ESA alignment, so that the decoder
meets boundaries like the ones inference gives it. The targets stay the transcript, matched position by
position, so a sampled alignment is used only when it has exactly as many tokens as the transcript: its
labels may differ (substitutions, which the decoder learns to see past), but an alignment with an
insertion or a deletion would shift every later target, so it is dropped and the utterance keeps its
Viterbi segments. The authors' code has options (off in their published recipes) that perturb training
alignments in the same spirit, always keeping the token count: a second-best Viterbi transition at random
frames, random shifts of the triggers.

Label 0 is CTC's blank and the padding, label 1 is EOS (:class:`~arlib.speech.models.TranscriptVocab`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from arlib.speech._checks import index_tensor
from arlib.speech._checks import lengths as check_lengths
from arlib.speech._checks import memory as check_memory
from arlib.speech.ctc import viterbi_align
from arlib.speech.models import BLANK, EOS, CrossAttention, DecoderBlock, layer_config, sinusoids, speech_layer
from arlib.text.gpt import MLP
from arlib.validate import describe, int_at_least, int_in_range, is_int, number_in, positive_int
from arlib.validate import generator as check_generator

# --- alignments -> segments ------------------------------------------------------------------------


def _check_scores(scores, dim: int, name: str, lengths: torch.Tensor | None = None, normalized: bool = True) -> None:
    """``scores``: a float tensor of ``dim`` dimensions over at least 2 classes, without NaN or +inf; with
    ``normalized`` its rows (those below ``lengths`` in (B, T, C)) are log-probabilities."""
    shape = "(T, C) for one utterance" if dim == 2 else "(B, T, C)"
    if not isinstance(scores, torch.Tensor) or scores.dim() != dim or not scores.is_floating_point() \
            or scores.shape[-1] < 2:
        raise ValueError(f"{name}: expected a float tensor {shape} of CTC log-probabilities (C >= 2 with the "
                         f"blank), got {describe(scores)}")
    s = scores.detach()
    if torch.isnan(s).any() or (s == float("inf")).any():
        raise ValueError(f"{name}: expected log-probabilities, got NaN or +inf")
    if normalized and s.numel():
        lse = torch.logsumexp(s, dim=-1)  # (T,) or (B, T)
        if lengths is not None:
            lse = lse[torch.arange(s.shape[-2], device=s.device) < lengths[:, None]]
        tol = 1e-3 if s.dtype in (torch.float32, torch.float64) else 1e-2
        if lse.numel() and not float(lse.abs().max()) <= tol:
            raise ValueError(f"{name}: expected log-probabilities (each frame's row log-sum-exps to 0, as "
                             "log_softmax(-1) gives): raw logits?")


def _length(length, T: int) -> int:
    return T if length is None else int_in_range(length, "length", 0, T, expected=f"an int in [0, {T}] (frames)")


def _onsets(path: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Triggers of a batch of label paths (B, T): the first frame of each run of a non-blank label, below
    each row's length. (B, T) bool."""
    prev = F.pad(path[:, :-1], (1, 0), value=BLANK)
    real = torch.arange(path.shape[1], device=path.device) < lengths[:, None]
    return (path != BLANK) & (path != prev) & real


def _segments(triggers: list[int]) -> list[tuple[int, int]]:
    """Trigger frames -> ``[s_{u-1} + 1, s_u + 1)`` per token."""
    ends = [s + 1 for s in triggers]
    return list(zip([0] + ends[:-1], ends))


def _esa_paths(log_probs: torch.Tensor, threshold: float, gen: torch.Generator | None) -> torch.Tensor:
    """ESA labels (B, T): the best label where its probability is >= threshold, else one of the top two
    with probability 1/2 each."""
    top_lp, top = log_probs.detach().topk(2, dim=-1)  # (B, T, 2)
    unsure = top_lp[..., 0].exp() < threshold
    coin = torch.rand(top.shape[:2], generator=gen).to(top.device) < 0.5
    return top.gather(-1, (unsure & coin).long()[..., None]).squeeze(-1)


def ctc_segments(log_probs: torch.Tensor, length: int | None = None) -> tuple[list[int], list[tuple[int, int]]]:
    """The CTC best path's tokens and their segments (the inference-time alignment of CASS-NAT).

    ``log_probs`` (T, C) for one utterance (only the argmax is read: logits do too); ``length`` frames
    (default T). Each run of a non-blank label is one token (a label repeated across a blank is two);
    token u's segment is ``[s_{u-1} + 1, s_u + 1)`` for its trigger (first) frame ``s_u``, see the module's
    notes. Returns (tokens, segments), one ``(start, end)`` frame pair per token."""
    _check_scores(log_probs, 2, "log_probs", normalized=False)
    length = _length(length, log_probs.shape[0])
    path = log_probs[:length].argmax(-1)[None]  # (1, length)
    triggers = _onsets(path, torch.tensor([length], device=path.device))[0].nonzero().flatten()
    return path[0, triggers].tolist(), _segments(triggers.tolist())


def esa_segments(log_probs: torch.Tensor, length: int | None = None, threshold: float = 0.9,
                 generator: torch.Generator | None = None) -> tuple[list[int], list[tuple[int, int]]]:
    """An error-based sampling alignment (ESA, Fan et al. 2021) and its segments: (tokens, segments).

    Frame by frame, the best label if its probability is at least ``threshold``, else one of the two most
    probable labels, each with probability 1/2; then tokens and segments as in :func:`ctc_segments`.
    ``threshold=0`` gives the best path. ``log_probs`` (T, C) must be log-probabilities."""
    _check_scores(log_probs, 2, "log_probs", normalized=False)
    length = _length(length, log_probs.shape[0])
    _check_scores(log_probs[:length], 2, "log_probs")
    number_in(threshold, "threshold", 0, 1)
    gen = check_generator(generator)
    path = _esa_paths(log_probs[None, :length], threshold, gen)  # (1, length)
    triggers = _onsets(path, torch.tensor([length], device=path.device))[0].nonzero().flatten()
    return path[0, triggers].tolist(), _segments(triggers.tolist())


def _target(target, C: int) -> torch.Tensor:
    if isinstance(target, (list, tuple)) and all(is_int(t) for t in target):
        target = torch.tensor([int(t) for t in target], dtype=torch.long)
    if not index_tensor(target) or target.dim() != 1:
        raise ValueError(f"target: expected a 1-D integer tensor (or a list of ints) of labels, got {describe(target)}")
    if target.numel() and (target.min() < 1 or target.max() >= C):
        raise ValueError(f"target: expected labels in [1, {C}) (0 is the blank)")
    return target.long()


def _need_frames(target: torch.Tensor) -> int:
    """Frames a CTC path for ``target`` needs: one per token, plus a blank between equal neighbours."""
    return len(target) + int((target[1:] == target[:-1]).sum())


def viterbi_segments(log_probs: torch.Tensor, target, length: int | None = None) -> list[tuple[int, int]]:
    """The segments of ``target``'s tokens in its Viterbi (forced) alignment: CASS-NAT's training alignment.

    ``log_probs`` (T, C) log-probabilities of one utterance, ``target`` (U,) its labels, ``length`` frames
    (default T). The alignment is :func:`~arlib.speech.ctc.viterbi_align`'s; token u's trigger is its first
    frame there and its segment ``[s_{u-1} + 1, s_u + 1)``. Returns U ``(start, end)`` pairs."""
    _check_scores(log_probs, 2, "log_probs", normalized=False)
    length = _length(length, log_probs.shape[0])
    _check_scores(log_probs[:length], 2, "log_probs")
    target = _target(target, log_probs.shape[1])
    if _need_frames(target) > length:
        raise ValueError(f"target: {len(target)} labels need {_need_frames(target)} frames (a blank between "
                         f"repeats), the utterance has {length}")
    if len(target) == 0:
        return []
    path = viterbi_align(log_probs[:length], target)  # (length,) index into l' = (_, y1, _, y2, ...)
    prev = F.pad(path[:-1], (1, 0), value=-1)
    triggers = ((path % 2 == 1) & (path != prev)).nonzero().flatten()
    return _segments(triggers.tolist())


def forced_segments(log_probs: torch.Tensor, lengths, targets: torch.Tensor, target_lengths
                    ) -> list[list[tuple[int, int]]]:
    """:func:`viterbi_segments` for a batch: (B, T, C) log-probabilities, (B,) frame counts, (B, U) padded
    targets, (B,) target lengths -> B lists of segments. With a frozen encoder, run it once over the
    training set and pass each batch's rows to :meth:`CassNAT.loss` (``segments=``)."""
    _check_scores(log_probs, 3, "log_probs", normalized=False)
    B, T, C = log_probs.shape
    lengths = check_lengths(lengths, "lengths", B, 0, T)
    _check_scores(log_probs, 3, "log_probs", lengths.to(log_probs.device))
    if not index_tensor(targets) or targets.dim() != 2 or targets.shape[0] != B:
        raise ValueError(f"targets: expected an integer tensor ({B}, U) of padded labels, got {describe(targets)}")
    target_lengths = check_lengths(target_lengths, "target_lengths", B, 0, targets.shape[1])
    out = []
    for b in range(B):
        row = targets[b, :int(target_lengths[b])].cpu()
        if row.numel() and (row.min() < 1 or row.max() >= C):
            raise ValueError(f"targets: expected labels in [1, {C}) (0 is the blank), row {b} has {row.tolist()}")
        if _need_frames(row) > lengths[b]:
            raise ValueError(f"targets: row {b}'s {len(row)} labels need {_need_frames(row)} frames, "
                             f"its utterance has {int(lengths[b])}")
        out.append(viterbi_segments(log_probs[b], row, int(lengths[b])))
    return out


# --- segments -> the trigger mask -------------------------------------------------------------------


def _bounds(triggers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Trigger masks (B, T) -> starts, ends (B, U) of each token's segment and token counts (B,)."""
    B, T = triggers.shape
    counts = triggers.sum(dim=1)
    U = int(counts.max()) if B else 0
    frames = torch.arange(T, device=triggers.device)
    ends = torch.where(triggers, frames, T).sort(dim=1).values[:, :U] + 1  # s_u + 1 (padding past the count)
    starts = torch.cat([torch.zeros_like(ends[:, :1]), ends], dim=1)[:, :U]  # s_{u-1} + 1, 0 for the first
    return starts, ends, counts


def _listed(segments, lengths: torch.Tensor, max_len: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """B lists of (start, end) pairs, checked against the frame counts -> starts, ends (B, U), counts (B,)."""
    B = len(lengths)
    if not isinstance(segments, (list, tuple)) or len(segments) != B:
        got = f"{len(segments)} lists" if isinstance(segments, (list, tuple)) else type(segments).__name__
        raise ValueError(f"segments: expected a list of {B} lists (one per utterance) of (start, end) frame pairs, "
                         f"got {got}")
    for b, row in enumerate(segments):
        if not isinstance(row, (list, tuple)):
            raise ValueError(f"segments: utterance {b}: expected a list of (start, end) pairs, "
                             f"got {type(row).__name__}")
        if len(row) + 1 > max_len:
            raise ValueError(f"segments: utterance {b} has {len(row)} tokens; the model takes at most "
                             f"max_len - 1 = {max_len - 1}")
        end, L = 0, int(lengths[b])
        for pair in row:
            if not isinstance(pair, (list, tuple)) or len(pair) != 2 or not all(is_int(x) for x in pair) \
                    or not end <= pair[0] < pair[1] <= L:
                raise ValueError(f"segments: utterance {b}: expected ordered, non-overlapping, non-empty int pairs "
                                 f"[start, end) within its {L} frames, got {pair!r} after frame {end}")
            end = int(pair[1])
    U = max(map(len, segments), default=0)
    starts = torch.tensor([[int(s) for s, _ in row] + [0] * (U - len(row)) for row in segments],
                          dtype=torch.long).view(B, U)
    ends = torch.tensor([[int(e) for _, e in row] + [0] * (U - len(row)) for row in segments],
                        dtype=torch.long).view(B, U)
    return starts, ends, torch.tensor([len(row) for row in segments])


def _trigger_mask(starts, ends, counts, lengths, S: int, expand: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The trigger mask (B, U+1, S), True where position u reads frame t, and the real positions (B, U+1):
    U_b tokens, then the EOS position over the frames after the last token (at least the last frame)."""
    starts, ends, counts, lengths = (x.to(lengths.device) for x in (starts, ends, counts, lengths))
    B, U = starts.shape
    u = torch.arange(U + 1, device=lengths.device)  # (U+1,)
    t = torch.arange(S, device=lengths.device)  # (S,)
    tail = u[None] == counts[:, None]  # (B, U+1): the EOS position
    last_end = F.pad(ends, (1, 0)).gather(1, counts[:, None])  # (B, 1): end of the last token (0 if none)
    st = torch.where(tail, last_end, F.pad(starts, (0, 1)))  # (B, U+1)
    en = torch.where(tail, lengths[:, None], F.pad(ends, (0, 1)))
    mask = (t >= st[..., None]) & (t < en[..., None])  # (B, U+1, S)
    mask |= tail[..., None] & (t == (lengths - 1).clamp_min(0)[:, None, None])
    if expand:  # improved CASS-NAT: widen each segment by `expand` frames on both sides
        wide = F.max_pool1d(mask.flatten(0, 1)[:, None].float(), 2 * expand + 1, stride=1, padding=expand)
        mask = (wide[:, 0] > 0).view(B, U + 1, S) & (t < lengths[:, None, None])
    valid = u[None] <= counts[:, None]  # (B, U+1)
    return torch.where(valid[..., None], mask, t == 0), valid  # padding positions read frame 0 (never used)


# --- the model ---------------------------------------------------------------------------------------


class CassNAT(nn.Module):
    """CASS-NAT's decoder over a (frozen or trained) speech encoder's output and its CTC head's alignment.

    Token-level acoustic embedding extractor: the query of position u is the sinusoidal encoding of u
    (the paper's), and one layer of cross-attention restricted to u's segment (the trigger mask), with an
    MLP, turns it into u's TAE. Then ``layers`` decoder blocks, each self-attention over the tokens (no
    causal mask) + cross-attention to the whole memory + MLP, and a linear map to the vocabulary. The
    paper's decoder puts self-attention-only blocks before the mixed ones; the book's has mixed ones only.
    Position U (after the U tokens) predicts EOS. ``expand`` widens each trigger mask by that many
    frames on each side (the improved CASS-NAT); ``max_len`` bounds the positions (tokens + EOS).
    """

    def __init__(self, vocab_size: int, d: int = 64, layers: int = 2, heads: int = 4, ff: int = 256,
                 max_len: int = 64, dropout: float = 0.1, expand: int = 0):
        super().__init__()
        int_at_least(vocab_size, "vocab_size", 2, expected="an int >= 2 (the blank/padding and EOS come first)")
        positive_int(ff, "ff")
        positive_int(max_len, "max_len")
        int_at_least(expand, "expand", 0)
        layer = layer_config(d, heads, layers, dropout)  # checks the sizes before anything is built
        if d % 2:
            raise ValueError(f"d: expected an even width (the queries are sinusoids), got {d}")
        self.config = dict(vocab_size=vocab_size, d=d, layers=layers, heads=heads, ff=ff, max_len=max_len,
                           dropout=dropout, expand=expand)
        self.ln_query, self.extract = nn.LayerNorm(d), CrossAttention(layer)  # the TAE extractor
        self.extract.attn_dropout = 0.0  # as speech_layer does for the blocks
        self.ln_extract, self.extract_mlp = nn.LayerNorm(d), MLP(layer, ff, "none")
        self.blocks = nn.ModuleList(speech_layer(DecoderBlock(layer, ff, "none")) for _ in range(layers))
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab_size)

    # -- checks
    def _check_memory(self, memory, memory_lengths) -> torch.Tensor:
        return check_memory(memory, memory_lengths, self.config["d"])

    def _check_ctc(self, ctc_log_probs, memory, memory_lengths, normalized: bool) -> None:
        B, S = memory.shape[:2]
        if not isinstance(ctc_log_probs, torch.Tensor) or ctc_log_probs.shape[:2] != (B, S):
            raise ValueError(f"ctc_log_probs: expected the CTC head's (B={B}, S={S}, C) log-probabilities over "
                             f"memory's frames, got {describe(ctc_log_probs)}")
        _check_scores(ctc_log_probs, 3, "ctc_log_probs", memory_lengths.to(ctc_log_probs.device), normalized)

    # -- the network
    def _embed(self, memory, mask) -> torch.Tensor:
        """TAEs (B, U+1, d): queries = sinusoids of the positions, attending within ``mask`` (B, U+1, S)."""
        B, N = mask.shape[:2]
        q = sinusoids(N, memory.shape[2], memory.device).to(memory.dtype).expand(B, N, -1)
        x = q + self.extract(self.ln_query(q), self.extract.keys_values(memory), mask[:, None])
        return x + self.extract_mlp(self.ln_extract(x))

    def _logits(self, memory, memory_lengths, mask, valid) -> torch.Tensor:
        x = self._embed(memory, mask)  # (B, U+1, d)
        self_mask = valid[:, None, None, :]  # (B, 1, 1, U+1): real positions as keys
        mmask = (torch.arange(memory.shape[1], device=memory.device) < memory_lengths[:, None])[:, None, None, :]
        for block in self.blocks:  # all positions at once: no causal mask
            x = block(x, block.cross.keys_values(memory), mmask, mask=self_mask)
        return self.head(self.ln(x))  # (B, U+1, V)

    def _mask(self, bounds, memory, memory_lengths):
        return _trigger_mask(*bounds, memory_lengths, memory.shape[1], self.config["expand"])

    # -- public
    def acoustic_embeddings(self, memory, memory_lengths, segments) -> torch.Tensor:
        """The token-level acoustic embeddings (B, U+1, d): position u < U_b of utterance b from its
        segment ``segments[b][u]`` alone (widened by ``expand``), position U_b (EOS) from the frames after
        the last segment. Positions past U_b are padding."""
        memory_lengths = self._check_memory(memory, memory_lengths)
        mask, _ = self._mask(_listed(segments, memory_lengths, self.config["max_len"]), memory, memory_lengths)
        return self._embed(memory, mask)

    def forward(self, memory, memory_lengths, segments) -> torch.Tensor:
        """Logits (B, U+1, V) for memory (B, S, d), its lengths (B,) and each utterance's token segments
        (B lists of ``(start, end)`` frame pairs, as :func:`ctc_segments` gives): position u < U_b is token
        u, position U_b predicts EOS, later positions are padding."""
        memory_lengths = self._check_memory(memory, memory_lengths)
        mask, valid = self._mask(_listed(segments, memory_lengths, self.config["max_len"]), memory, memory_lengths)
        return self._logits(memory, memory_lengths, mask, valid)

    def loss(self, memory, memory_lengths, targets, target_lengths, ctc_log_probs=None, sample: float = 0.0,
             generator: torch.Generator | None = None, segments=None, threshold: float = 0.9) -> torch.Tensor:
        """Cross-entropy of the transcript and its EOS, averaged over the batch's positions.

        Segments: ``segments`` (precomputed by :func:`forced_segments`) or else the Viterbi alignment of
        ``ctc_log_probs`` (B, S, C); with probability ``sample`` per utterance, those of an ESA alignment of
        ``ctc_log_probs`` (``threshold``) when it has as many tokens as the transcript (module notes)."""
        memory_lengths = self._check_memory(memory, memory_lengths)
        B, S, _ = memory.shape
        number_in(sample, "sample", 0, 1)
        number_in(threshold, "threshold", 0, 1)
        gen = check_generator(generator)
        V = self.config["vocab_size"]
        if not index_tensor(targets) or targets.dim() != 2 or targets.shape[0] != B:
            raise ValueError(f"targets: expected an integer tensor ({B}, U) of ids, got {describe(targets)}")
        target_lengths = check_lengths(target_lengths, "target_lengths", B, 0, targets.shape[1], memory.device)
        targets = targets.to(memory.device).long()
        real = torch.arange(targets.shape[1], device=memory.device) < target_lengths[:, None]
        if ((targets < 2) | (targets >= V))[real].any():
            raise ValueError(f"targets: expected unit ids in [2, {V}) (0 is the blank/padding, 1 EOS)")
        if int(target_lengths.max()) + 1 > self.config["max_len"]:
            raise ValueError(f"targets: {int(target_lengths.max())} tokens; the model takes at most "
                             f"max_len - 1 = {self.config['max_len'] - 1}")
        if ctc_log_probs is not None:
            self._check_ctc(ctc_log_probs, memory, memory_lengths, normalized=True)
        elif segments is None or sample > 0:
            raise ValueError("ctc_log_probs: needed for the Viterbi alignment (no segments given) or for sampling")
        if segments is None:
            segments = forced_segments(ctc_log_probs, memory_lengths, targets, target_lengths)
        starts, ends, counts = _listed(segments, memory_lengths, self.config["max_len"])
        if (counts.to(target_lengths.device) != target_lengths).any():
            raise ValueError(f"segments: expected one segment per target token ({target_lengths.tolist()}), "
                             f"got {counts.tolist()}")
        starts, ends, counts = starts.to(memory.device), ends.to(memory.device), counts.to(memory.device)
        if sample > 0:
            pick = (torch.rand(B, generator=gen) < sample).to(memory.device)
            if pick.any():
                paths = _esa_paths(ctc_log_probs, threshold, gen).to(memory.device)  # (B, S)
                s2, e2, c2 = _bounds(_onsets(paths, memory_lengths))
                use = pick & (c2 == target_lengths)  # same token count as the transcript
                U = max(starts.shape[1], s2.shape[1])
                starts, ends, s2, e2 = (F.pad(x, (0, U - x.shape[1])) for x in (starts, ends, s2, e2))
                starts, ends = torch.where(use[:, None], s2, starts), torch.where(use[:, None], e2, ends)
        mask, valid = self._mask((starts, ends, counts), memory, memory_lengths)
        logits = self._logits(memory, memory_lengths, mask, valid)  # (B, U+1, V)
        N = logits.shape[1]
        y = F.pad(targets, (0, max(0, N - targets.shape[1])))[:, :N].clone()
        y[torch.arange(B, device=y.device), counts] = EOS
        y[~valid] = -100
        return F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-100)

    @torch.no_grad()
    def decode(self, memory, memory_lengths, ctc_log_probs) -> list[list[int]]:
        """Token lists for a batch in one decoder pass, on the CTC best path's segments (so each has as many
        tokens as :func:`~arlib.speech.ctc.greedy_decode` gives). ``ctc_log_probs`` (B, S, C): only its
        argmax is read."""
        memory_lengths = self._check_memory(memory, memory_lengths)
        self._check_ctc(ctc_log_probs, memory, memory_lengths, normalized=False)
        bounds = _bounds(_onsets(ctc_log_probs.argmax(-1).to(memory.device), memory_lengths))
        if int(bounds[2].max()) + 1 > self.config["max_len"]:
            raise ValueError(f"ctc_log_probs: its best path has {int(bounds[2].max())} tokens; the model takes at "
                             f"most max_len - 1 = {self.config['max_len'] - 1}")
        return self._decode(memory, memory_lengths, bounds)

    @torch.no_grad()
    def decode_with_segments(self, memory, memory_lengths, segments) -> list[list[int]]:
        """Token lists decoded on given segments (B lists of ``(start, end)`` pairs): the oracle alignment's
        (:func:`forced_segments` of the reference) or sampled ones (:func:`esa_segments`)."""
        memory_lengths = self._check_memory(memory, memory_lengths)
        return self._decode(memory, memory_lengths, _listed(segments, memory_lengths, self.config["max_len"]))

    def _decode(self, memory, memory_lengths, bounds) -> list[list[int]]:
        mask, valid = self._mask(bounds, memory, memory_lengths)
        best = self._logits(memory, memory_lengths, mask, valid).argmax(-1).tolist()
        return [row[:n] for row, n in zip(best, bounds[2].tolist())]
