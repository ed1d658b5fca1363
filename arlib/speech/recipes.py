"""Recipes for chapter 5's speech recognizers: ``python -m arlib.recipes NAME`` with NAME one of

- ``speech-ctc``: the speech encoder with a CTC head, trained from scratch with SpecAugment;
- ``speech-aed``: an autoregressive attention decoder over characters on the frozen ``speech-ctc`` encoder;
- ``speech-aed-words``: the same over whole words (the vocabulary's 40);
- ``speech-paraformer``: CIF predictor + parallel decoder over words with the glancing sampler, same encoder;
- ``speech-paraformer-noglance``: the same without the glancing sampler (the ablation).

Sharing one frozen encoder keeps the checkpoints small and makes the comparison a comparison of
*decoders*: every model hears exactly the same acoustic representation. Training data: 6,000 utterances
of the training voices; the metrics in each sidecar are on 400 utterances of the disjoint test voices.
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
from arlib.speech.ctc import greedy_decode
from arlib.speech.error_rates import word_error_rate
from arlib.speech.models import AttentionDecoder, CTCModel, TranscriptVocab, speech_features
from arlib.speech.paraformer import Paraformer
from arlib.train import Recipe, TrainConfig, mean_last_loss, train
from arlib.validate import int_at_least, number_in, positive_int

N_TRAIN, N_TEST = 6000, 400


@dataclass(frozen=True)
class SpeechRecipe:
    kind: str  # "ctc", "aed" or "paraformer"
    train: TrainConfig
    batch_size: int
    description: str
    model: dict  # constructor arguments
    glance: float = 0.0  # the glancing sampler's lambda (Paraformer)
    augment: int = 0  # decoders: extra copies of the training memory from SpecAugmented frames
    unit: str = "char"  # the tokens: characters, or whole words (CIF fires once per token)

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
        int_at_least(self.augment, "augment", 0)
        if self.unit not in ("char", "word"):
            raise ValueError(f"unit: expected 'char' or 'word', got {self.unit!r}")


def _check_kind(kind) -> str:
    if kind not in ("ctc", "aed", "paraformer"):
        raise ValueError(f"kind: expected one of 'ctc', 'aed', 'paraformer', got {kind!r}")
    return kind


SPEECH_RECIPES: dict[str, SpeechRecipe] = {
    "speech-ctc": SpeechRecipe("ctc", TrainConfig(steps=4000, lr=2e-3, warmup=300, weight_decay=0.01), 32,
                               "speech encoder (conv subsampling + 6 transformer layers) with a CTC head",
                               {"d": 64, "layers": 6, "heads": 4, "ff": 256}),
    "speech-aed": SpeechRecipe("aed", TrainConfig(steps=3000, lr=2e-3, warmup=200, weight_decay=0.01), 64,
                               "autoregressive attention decoder over the frozen speech-ctc encoder",
                               {"d": 64, "layers": 2, "heads": 4, "ff": 256}, augment=4),
    "speech-aed-words": SpeechRecipe("aed", TrainConfig(steps=3000, lr=2e-3, warmup=200, weight_decay=0.01), 64,
                                     "autoregressive attention decoder over words, frozen speech-ctc encoder",
                                     {"d": 64, "layers": 2, "heads": 4, "ff": 256}, augment=4, unit="word"),
    "speech-paraformer": SpeechRecipe("paraformer", TrainConfig(steps=3000, lr=2e-3, warmup=200, weight_decay=0.01),
                                      64, "Paraformer over words (CIF + parallel decoder, glancing), frozen encoder",
                                      {"d": 64, "layers": 2, "heads": 4, "ff": 256}, glance=0.75, unit="word",
                                      augment=4),
    "speech-paraformer-noglance": SpeechRecipe(
        "paraformer", TrainConfig(steps=3000, lr=2e-3, warmup=200, weight_decay=0.01), 64,
        "Paraformer over words without the glancing sampler (ablation), frozen encoder",
        {"d": 64, "layers": 2, "heads": 4, "ff": 256}, glance=0.0, unit="word", augment=4),
}
ENCODER = "speech-ctc"


def build_speech(kind: str, config: dict):
    """An untrained model of ``kind`` (``"ctc"``, ``"aed"`` or ``"paraformer"``) built from ``config``."""
    _check_kind(kind)
    if not isinstance(config, dict):
        raise ValueError(f"config: expected a dict of constructor arguments, got {type(config).__name__}")
    if kind == "ctc":
        return CTCModel(**config)
    if kind == "aed":
        return AttentionDecoder(**config)
    return Paraformer(**config)


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


KINDS = {kind: build_from_meta for kind in ("ctc", "aed", "paraformer")}


def _check_name(name) -> str:
    if not isinstance(name, str) or name not in SPEECH_RECIPES:
        raise ValueError(f"name: expected one of {', '.join(SPEECH_RECIPES)}, got {name!r}")
    return name


def _pad(rows: list[torch.Tensor]) -> torch.Tensor:
    return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)


@torch.no_grad()
def encode_all(model: CTCModel, feats: list[torch.Tensor], device, batch: int = 64):
    """The encoder's output for each utterance, unpadded: list of (T', d) on ``device``."""
    if not isinstance(model, CTCModel):
        raise ValueError(f"model: expected a CTCModel (its encoder is used), got {type(model).__name__}")
    n_mels = model.encoder.config["n_mels"]
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
        hidden, hl = model.encoder(x, lengths)
        out.extend((i, hidden[b, :hl[b]]) for b, i in enumerate(idx))
    return [h for _, h in sorted(out, key=lambda pair: pair[0])]


def _features(utterances) -> list[torch.Tensor]:
    return [speech_features([u.waveform])[0][0] for u in utterances]


def run_speech_recipe(name: str, steps: int | None = None, out: str | None = None, progress: bool = True,
                      n_train: int = N_TRAIN, n_test: int = N_TEST, **_ignored) -> dict:
    """Train the speech recipe ``name`` (one of ``SPEECH_RECIPES``), save its checkpoint, return its sidecar."""
    recipe = SPEECH_RECIPES[_check_name(name)]
    if steps is not None:
        positive_int(steps, "steps")
    positive_int(n_train, "n_train")
    positive_int(n_test, "n_test")
    if not isinstance(progress, bool):
        raise ValueError(f"progress: expected a bool, got {progress!r}")
    device = pick_device()
    seed_everything(0)
    config = recipe.train if steps is None else TrainConfig(**{**asdict(recipe.train), "steps": steps,
                                                                "warmup": min(recipe.train.warmup, steps)})
    config = TrainConfig(**{**asdict(config), "progress": progress})
    vocab = TranscriptVocab(unit=recipe.unit)
    t0 = time.time()
    train_set, test_set = spoken_utterances("train", n=n_train), spoken_utterances("test", n=n_test)
    train_feats, test_feats = _features(train_set), _features(test_set)
    targets = [torch.tensor(vocab.encode(u.transcript)) for u in train_set]
    test_refs = [u.transcript for u in test_set]
    augment = torch.Generator().manual_seed(1)  # SpecAugment's and the glancing sampler's own stream

    def batch_indices(generator):
        return torch.randint(len(train_set), (recipe.batch_size,), generator=generator).tolist()

    def target_batch(idx):
        return _pad([targets[i] for i in idx]).to(device), torch.tensor([len(targets[i]) for i in idx], device=device)

    if recipe.kind == "ctc":
        model_config = {"vocab_size": vocab.size, **recipe.model}
        model = build_speech("ctc", model_config).to(device)

        def get_batch(step, generator):
            idx = batch_indices(generator)
            lengths = torch.tensor([len(train_feats[i]) for i in idx])
            x = spec_augment(_pad([train_feats[i] for i in idx]), lengths, augment)
            return x.to(device), lengths.to(device), *target_batch(idx)

        def loss_fn(net, batch):
            x, lengths, y, y_lengths = batch
            log_probs, out_lengths = net(x, lengths)  # torch's CTC loss: equal to arlib.speech.ctc's (tested), faster
            return F.ctc_loss(log_probs.transpose(0, 1), y, out_lengths, y_lengths, zero_infinity=True)

        def evaluate(net):
            hyps = []
            for s in range(0, len(test_feats), 50):
                chunk = test_feats[s:s + 50]
                log_probs, lengths = net(_pad(chunk).to(device), torch.tensor([len(f) for f in chunk], device=device))
                hyps += [vocab.decode(ids) for ids in greedy_decode(log_probs, lengths)]
            return {"test_wer": word_error_rate(test_refs, hyps)}
        encoder_name = None
    else:
        here = out is not None and (Path(out) / f"{ENCODER}.json").exists()  # a --out folder's own encoder first
        encoder, _ = load_speech(ENCODER, device, out if here else None)
        test_memory = encode_all(encoder, test_feats, device)
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

        def get_batch(step, generator):
            idx = batch_indices(generator)
            copy = int(torch.randint(len(train_memory), (), generator=generator))  # which (augmented) hearing
            lengths = torch.tensor([len(train_memory[copy][i]) for i in idx], device=device)
            return _pad([train_memory[copy][i] for i in idx]), lengths, *target_batch(idx)

        def loss_fn(net, batch):
            memory, lengths, y, y_lengths = batch
            if recipe.kind == "aed":
                return net.loss(memory, lengths, y, y_lengths)
            return net.loss(memory, lengths, y, y_lengths, glance=recipe.glance, generator=augment)[0]

        def evaluate(net):
            hyps = []
            for s in range(0, len(test_memory), 50):
                chunk = test_memory[s:s + 50]
                memory, lengths = _pad(chunk), torch.tensor([len(m) for m in chunk], device=device)
                ids = net.greedy(memory, lengths)[0] if recipe.kind == "aed" else net.decode(memory, lengths)
                hyps += [vocab.decode(row) for row in ids]
            return {"test_wer": word_error_rate(test_refs, hyps)}

    history = train(model, loss_fn, lambda step, g: get_batch(step, g), config, evaluate)
    metrics = store_int8(model, history["eval"][-1][1], evaluate)
    meta = {"name": name, "kind": recipe.kind, "description": recipe.description, "config": model_config,
            "unit": recipe.unit,
            "encoder": encoder_name,
            "glance": recipe.glance, "parameters": sum(p.numel() for p in model.parameters()),
            "train": {**asdict(config), "batch_size": recipe.batch_size, "final_train_loss": mean_last_loss(history)},
            "metrics": metrics, "eval_history": history["eval"],
            "data": {"train": {"split": "train", "n": n_train, "seed": 0}, "test": {"split": "test", "n": n_test,
                                                                                   "seed": 0},
                     "espeak_ng": espeak_version()},
            **provenance(name, steps, t0, device, stored_dtype="int8")}
    save_checkpoint(model, name, meta, out, dtype=torch.int8)
    return meta


RECIPES = {name: Recipe(name, r.kind, r.model, r.train, run_speech_recipe, r.description)
           for name, r in SPEECH_RECIPES.items()}
