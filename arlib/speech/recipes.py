"""Recipes for chapter 5's speech recognizers: ``python -m arlib.recipes NAME`` with NAME one of

- ``speech-hybrid``: the speech encoder trained from scratch with SpecAugment under the hybrid
  CTC/attention loss of Watanabe et al. 2017 (0.3 CTC + 0.7 attention), with its CTC head over characters
  and its attention decoder over characters (the AR baseline);
- ``speech-hybrid-nospecaug``: the same without SpecAugment (the ablation);
- ``speech-aed-words``: an attention decoder over whole words (the vocabulary's 40) on the frozen
  ``speech-hybrid`` encoder;
- ``speech-ctc-words``: a CTC head over whole words (two transformer layers + linear), same frozen encoder;
- ``speech-paraformer``: CIF predictor + parallel decoder over words with the glancing sampler, same encoder;
- ``speech-paraformer-noglance``: the same without the glancing sampler (the ablation);
- ``speech-cass-nat``: CASS-NAT over words: token-level acoustic embeddings cut by the alignment of
  ``speech-ctc-words``, a parallel decoder, error-based alignment sampling; same encoder.

Sharing one frozen encoder keeps the checkpoints small and makes the comparison a comparison of
*decoders*: every model hears exactly the same acoustic representation, and every decoder head has two
transformer layers. Training data: 6,000 utterances of the training voices, in length-bucketed batches;
the metrics in each sidecar are on 400 utterances of the dev voices (the test split is scored only in the
chapter).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from arlib.checkpoints import load_model, provenance, save_checkpoint, store_int8
from arlib.data.speech import espeak_version, spoken_utterances
from arlib.env import pick_device, seed_everything
from arlib.speech.audio import spec_augment
from arlib.speech.cass_nat import CassNAT, forced_segments
from arlib.speech.ctc import greedy_decode
from arlib.speech.error_rates import word_error_rate
from arlib.speech.models import (
    AttentionDecoder,
    CTCHead,
    CTCModel,
    HybridCTCAttention,
    TranscriptVocab,
    speech_features,
)
from arlib.speech.paraformer import Paraformer
from arlib.train import Recipe, TrainConfig, mean_last_loss, train
from arlib.validate import int_at_least, number_in, positive_int

N_TRAIN, N_DEV = 6000, 400
KIND_NAMES = ("hybrid", "aed", "ctc-head", "paraformer", "cass-nat")


@dataclass(frozen=True)
class SpeechRecipe:
    kind: str  # one of KIND_NAMES
    train: TrainConfig
    batch_size: int
    description: str
    model: dict  # constructor arguments
    glance: float = 0.0  # the glancing sampler's lambda (Paraformer)
    augment: int = 0  # hybrid: SpecAugment on (1) or off (0); decoders: extra SpecAugmented memory copies
    unit: str = "char"  # the tokens: characters, or whole words (CIF fires once per token)
    sample: float = 0.0  # CASS-NAT: the probability of a sampled (ESA) alignment in place of Viterbi's

    def __post_init__(self):
        _check_kind(self.kind)
        if not isinstance(self.train, TrainConfig):
            raise ValueError(f"train: expected a TrainConfig, got {type(self.train).__name__}")
        positive_int(self.batch_size, "batch_size")
        if not isinstance(self.description, str):
            raise ValueError(f"description: expected a str, got {type(self.description).__name__}")
        if not isinstance(self.model, dict):
            raise ValueError(f"model: expected a dict of constructor arguments, got {type(self.model).__name__}")
        number_in(self.glance, "glance", 0, 1)
        number_in(self.sample, "sample", 0, 1)
        int_at_least(self.augment, "augment", 0)
        if self.unit not in ("char", "word"):
            raise ValueError(f"unit: expected 'char' or 'word', got {self.unit!r}")


def _check_kind(kind) -> str:
    if kind not in KIND_NAMES:
        raise ValueError(f"kind: expected one of {', '.join(map(repr, KIND_NAMES))}, got {kind!r}")
    return kind


_DECODER = {"d": 64, "layers": 2, "heads": 4, "ff": 256}  # every head on the frozen encoder: two layers
_ENCODER = {"d": 64, "layers": 6, "heads": 4, "ff": 256, "decoder_layers": 2, "ctc_weight": 0.3}
_DECODER_TRAIN = TrainConfig(steps=3000, lr=2e-3, warmup=200, weight_decay=0.01)
SPEECH_RECIPES: dict[str, SpeechRecipe] = {
    "speech-hybrid": SpeechRecipe("hybrid", TrainConfig(steps=4000, lr=2e-3, warmup=300, weight_decay=0.01), 32,
                                  "hybrid CTC/attention (Watanabe et al. 2017): conv subsampling + 6 transformer "
                                  "layers, a CTC head and a 2-layer attention decoder over characters, SpecAugment",
                                  _ENCODER, augment=1),
    "speech-hybrid-nospecaug": SpeechRecipe("hybrid", TrainConfig(steps=4000, lr=2e-3, warmup=300, weight_decay=0.01),
                                            32, "the hybrid CTC/attention recipe without SpecAugment (ablation)",
                                            _ENCODER, augment=0),
    "speech-aed-words": SpeechRecipe("aed", _DECODER_TRAIN, 64,
                                     "autoregressive attention decoder over words, frozen speech-hybrid encoder",
                                     _DECODER, augment=4, unit="word"),
    "speech-ctc-words": SpeechRecipe("ctc-head", _DECODER_TRAIN, 64,
                                     "CTC head over words (2 transformer layers + linear), frozen encoder",
                                     _DECODER, augment=4, unit="word"),
    "speech-paraformer": SpeechRecipe("paraformer", _DECODER_TRAIN, 64,
                                      "Paraformer over words (CIF + parallel decoder, glancing), frozen encoder",
                                      _DECODER, glance=0.75, unit="word", augment=4),
    "speech-paraformer-noglance": SpeechRecipe(
        "paraformer", _DECODER_TRAIN, 64,
        "Paraformer over words without the glancing sampler (ablation), frozen encoder",
        _DECODER, glance=0.0, unit="word", augment=4),
    "speech-cass-nat": SpeechRecipe(
        "cass-nat", _DECODER_TRAIN, 64,
        "CASS-NAT over words (token acoustic embeddings cut by speech-ctc-words' alignment, parallel decoder, "
        "sampled alignments in training), frozen encoder",
        {**_DECODER, "expand": 1}, unit="word", augment=4, sample=0.5),
}
ENCODER = "speech-hybrid"
ALIGNER = "speech-ctc-words"  # CASS-NAT's alignments come from this CTC head


def build_speech(kind: str, config: dict):
    """An untrained model of ``kind`` (one of ``KIND_NAMES``) built from ``config``."""
    _check_kind(kind)
    if not isinstance(config, dict):
        raise ValueError(f"config: expected a dict of constructor arguments, got {type(config).__name__}")
    return {"hybrid": HybridCTCAttention, "aed": AttentionDecoder, "ctc-head": CTCHead,
            "paraformer": Paraformer, "cass-nat": CassNAT}[kind](**config)


def load_speech(name: str, device=None, directory=None):
    """One of chapter 5's checkpoints as float32 in eval mode: ``(model, meta)`` (readers use
    :func:`arlib.load`, which also gives the transcript vocabulary)."""
    _check_name(name)
    model, meta, _ = load_model(name, build_from_meta, device, directory)
    return model, meta


def build_from_meta(meta: dict):
    """An empty speech model of the sidecar's kind and config, and its transcript vocabulary."""
    if not isinstance(meta, dict) or not {"kind", "config", "unit"} <= set(meta):
        raise ValueError(f"meta: expected a speech checkpoint's sidecar with 'kind', 'config' and 'unit', "
                         f"got {sorted(meta) if isinstance(meta, dict) else type(meta).__name__}")
    return build_speech(meta["kind"], meta["config"]), {"vocab": TranscriptVocab(unit=meta["unit"])}


KINDS = {kind: build_from_meta for kind in KIND_NAMES}


def _check_name(name) -> str:
    if not isinstance(name, str) or name not in SPEECH_RECIPES:
        raise ValueError(f"name: expected one of {', '.join(SPEECH_RECIPES)}, got {name!r}")
    return name


def _pad(rows: list[torch.Tensor]) -> torch.Tensor:
    return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)


@torch.no_grad()
def encode_all(model, feats: list[torch.Tensor], device, batch: int = 64):
    """The encoder's output for each utterance, unpadded: list of (T', d) on ``device``. ``model`` is a
    :class:`~arlib.speech.models.CTCModel` or a :class:`~arlib.speech.models.HybridCTCAttention` (its shared
    encoder is used)."""
    if not isinstance(model, (CTCModel, HybridCTCAttention)):
        raise ValueError(f"model: expected a CTCModel or HybridCTCAttention (its encoder is used), "
                         f"got {type(model).__name__}")
    encoder = model.encoder
    n_mels = encoder.config["n_mels"]
    if not isinstance(feats, (list, tuple)) or not all(isinstance(f, torch.Tensor) and f.is_floating_point()
                                                       and f.dim() == 2 and len(f) and f.shape[1] == n_mels
                                                       for f in feats):
        raise ValueError(f"feats: expected a list of float tensors (T, {n_mels}), T >= 1, got {type(feats).__name__}")
    positive_int(batch, "batch")
    out = []
    order = sorted(range(len(feats)), key=lambda i: len(feats[i]))  # similar lengths together: less padding
    for s in range(0, len(order), batch):
        idx = order[s:s + batch]
        x = _pad([feats[i] for i in idx]).to(device)
        lengths = torch.tensor([len(feats[i]) for i in idx], device=device)
        hidden, hl = encoder(x, lengths)
        out.extend((i, hidden[b, :hl[b]]) for b, i in enumerate(idx))
    return [h for _, h in sorted(out, key=lambda pair: pair[0])]


def bucketed_batch(order: list[int], batch_size: int, generator: torch.Generator) -> list[int]:
    """A training batch of similar lengths: ``batch_size`` consecutive entries of ``order`` (the utterances
    sorted by length) from a random start, so that a batch pads little (Zelasko et al. 2025 measure how
    padding grows with unbucketed batches) while every utterance can meet every neighbour in length."""
    if not isinstance(order, (list, tuple)) or not order:
        raise ValueError(f"order: expected a non-empty list of utterance indices sorted by length, got {order!r:.60}")
    positive_int(batch_size, "batch_size")
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator: expected a torch.Generator, got {type(generator).__name__}")
    start = int(torch.randint(max(len(order) - batch_size, 0) + 1, (), generator=generator))
    return list(order[start:start + batch_size])


@torch.no_grad()
def _posteriors(head: CTCHead, memory: list[torch.Tensor], batch: int = 64) -> list[torch.Tensor]:
    """A CTC head's log-probabilities (T', C) for each utterance's memory (T', d)."""
    out = []
    for s in range(0, len(memory), batch):
        chunk = memory[s:s + batch]
        lengths = torch.tensor([len(m) for m in chunk], device=chunk[0].device)
        log_probs, _ = head(_pad(chunk), lengths)
        out += [log_probs[b, :n] for b, n in enumerate(lengths.tolist())]
    return out


def _features(utterances) -> list[torch.Tensor]:
    return [speech_features([u.waveform])[0][0] for u in utterances]


def run_speech_recipe(name: str, steps: int | None = None, out: str | None = None, progress: bool = True,
                      n_train: int = N_TRAIN, n_dev: int = N_DEV, **_ignored) -> dict:
    """Train the speech recipe ``name`` (one of ``SPEECH_RECIPES``), save its checkpoint, return its sidecar
    (its metrics are on ``n_dev`` utterances of the dev split)."""
    recipe = SPEECH_RECIPES[_check_name(name)]
    if steps is not None:
        positive_int(steps, "steps")
    positive_int(n_train, "n_train")
    positive_int(n_dev, "n_dev")
    if not isinstance(progress, bool):
        raise ValueError(f"progress: expected a bool, got {progress!r}")
    device = pick_device()
    seed_everything(0)
    config = recipe.train if steps is None else TrainConfig(**{**asdict(recipe.train), "steps": steps,
                                                                "warmup": min(recipe.train.warmup, steps)})
    config = TrainConfig(**{**asdict(config), "progress": progress})
    vocab = TranscriptVocab(unit=recipe.unit)
    t0 = time.time()
    train_set, dev_set = spoken_utterances("train", n=n_train), spoken_utterances("dev", n=n_dev)
    train_feats, dev_feats = _features(train_set), _features(dev_set)
    targets = [torch.tensor(vocab.encode(u.transcript)) for u in train_set]
    dev_refs = [u.transcript for u in dev_set]
    augment = torch.Generator().manual_seed(1)  # SpecAugment's and the glancing sampler's own stream
    order = sorted(range(len(train_set)), key=lambda i: len(train_feats[i]))

    def target_batch(idx):
        return _pad([targets[i] for i in idx]).to(device), torch.tensor([len(targets[i]) for i in idx], device=device)

    if recipe.kind == "hybrid":
        model_config = {"vocab_size": vocab.size, **recipe.model}
        model = build_speech("hybrid", model_config).to(device)

        def get_batch(step, generator):
            idx = bucketed_batch(order, recipe.batch_size, generator)
            lengths = torch.tensor([len(train_feats[i]) for i in idx])
            x = _pad([train_feats[i] for i in idx])
            if recipe.augment:
                x = spec_augment(x, lengths, augment)
            return x.to(device), lengths.to(device), *target_batch(idx)

        def loss_fn(net, batch):
            return net.losses(*batch)[0]  # torch's CTC loss: equal to arlib.speech.ctc's (tested), faster

        def evaluate(net):
            hyps, att = [], []
            for s in range(0, len(dev_feats), 50):
                chunk = dev_feats[s:s + 50]
                log_probs, lengths = net.ctc(_pad(chunk).to(device),
                                             torch.tensor([len(f) for f in chunk], device=device))
                hyps += [vocab.decode(ids) for ids in greedy_decode(log_probs, lengths)]
                hidden, hl = net.encoder(_pad(chunk).to(device), torch.tensor([len(f) for f in chunk], device=device))
                att += [vocab.decode(ids) for ids in net.decoder.greedy(hidden, hl)[0]]
            return {"dev_wer": word_error_rate(dev_refs, hyps), "dev_wer_attention": word_error_rate(dev_refs, att)}
        encoder_name = None
    else:
        here = out is not None and (Path(out) / f"{ENCODER}.json").exists()  # a --out folder's own encoder first
        encoder, _ = load_speech(ENCODER, device, out if here else None)
        dev_memory = encode_all(encoder, dev_feats, device)
        # The decoder's training memory: the clean encoder output, plus `augment` copies computed from
        # SpecAugmented frames (the frozen encoder's own training noise, so the decoder sees varied memory).
        train_memory = [encode_all(encoder, train_feats, device)]
        for _ in range(recipe.augment):
            lengths = [len(f) for f in train_feats]
            noisy = spec_augment(_pad(train_feats), torch.tensor(lengths), augment)
            train_memory.append(encode_all(encoder, [noisy[i, :n] for i, n in enumerate(lengths)], device))
        model_config = {"vocab_size": vocab.size, **recipe.model}
        model = build_speech(recipe.kind, model_config).to(device)
        encoder_name = ENCODER
        if recipe.kind == "cass-nat":  # the aligner's posteriors and the Viterbi segments, computed once
            aligner, _ = load_speech(ALIGNER, device, out if out is not None and (Path(out) / f"{ALIGNER}.json")
                                     .exists() else None)
            train_lp, dev_lp = (_posteriors(aligner, memory) for memory in (train_memory[0], dev_memory))
            train_segments = [forced_segments(lp[None], [len(lp)], t[None], [len(t)])[0]
                              for lp, t in zip(train_lp, targets)]

        def get_batch(step, generator):
            idx = bucketed_batch(order, recipe.batch_size, generator)
            copy = int(torch.randint(len(train_memory), (), generator=generator))  # which (augmented) hearing
            lengths = torch.tensor([len(train_memory[copy][i]) for i in idx], device=device)
            batch = (_pad([train_memory[copy][i] for i in idx]), lengths, *target_batch(idx))
            if recipe.kind == "cass-nat":  # the clean hearing's alignment serves its augmented copies too
                batch += (_pad([train_lp[i] for i in idx]), [train_segments[i] for i in idx])
            return batch

        def loss_fn(net, batch):
            memory, lengths, y, y_lengths = batch[:4]
            if recipe.kind == "cass-nat":
                return net.loss(memory, lengths, y, y_lengths, batch[4], sample=recipe.sample, generator=augment,
                                segments=batch[5])
            if recipe.kind == "aed":
                return net.loss(memory, lengths, y, y_lengths)
            if recipe.kind == "ctc-head":
                log_probs, out_lengths = net(memory, lengths)
                return F.ctc_loss(log_probs.transpose(0, 1), y, out_lengths, y_lengths, zero_infinity=True)
            return net.loss(memory, lengths, y, y_lengths, glance=recipe.glance, generator=augment)[0]

        def evaluate(net):
            hyps = []
            for s in range(0, len(dev_memory), 50):
                chunk = dev_memory[s:s + 50]
                memory, lengths = _pad(chunk), torch.tensor([len(m) for m in chunk], device=device)
                if recipe.kind == "aed":
                    ids = net.greedy(memory, lengths)[0]
                elif recipe.kind == "ctc-head":
                    ids = greedy_decode(*net(memory, lengths))
                elif recipe.kind == "cass-nat":
                    ids = net.decode(memory, lengths, _pad(dev_lp[s:s + 50]))
                else:
                    ids = net.decode(memory, lengths)
                hyps += [vocab.decode(row) for row in ids]
            return {"dev_wer": word_error_rate(dev_refs, hyps)}

    history = train(model, loss_fn, lambda step, g: get_batch(step, g), config, evaluate)
    metrics = store_int8(model, history["eval"][-1][1], evaluate)
    meta = {"name": name, "kind": recipe.kind, "description": recipe.description, "config": model_config,
            "unit": recipe.unit,
            "encoder": encoder_name,
            "glance": recipe.glance, "augment": recipe.augment, "sample": recipe.sample,
            "aligner": ALIGNER if recipe.kind == "cass-nat" else None,
            "parameters": sum(p.numel() for p in model.parameters()),
            "train": {**asdict(config), "batch_size": recipe.batch_size, "batches": "length-bucketed",
                      "final_train_loss": mean_last_loss(history)},
            "metrics": metrics, "eval_history": history["eval"],
            "data": {"train": {"split": "train", "n": n_train, "seed": 0}, "dev": {"split": "dev", "n": n_dev,
                                                                                 "seed": 0},
                     "espeak_ng": espeak_version()},
            **provenance(name, steps, t0, device, stored_dtype="int8")}
    save_checkpoint(model, name, meta, out, dtype=torch.int8)
    return meta


RECIPES = {name: Recipe(name, r.kind, r.model, r.train, run_speech_recipe, r.description)
           for name, r in SPEECH_RECIPES.items()}
