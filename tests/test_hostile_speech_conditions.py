"""Hostile inputs for arlib.speech.conditions: every public function answers a bad argument with a valid
result or a ValueError/TypeError naming the argument (:func:`hostile.rejects`, :func:`hostile.valid_or_rejects`).
Each probe is one parametrized case, so that the suite counts them."""

from __future__ import annotations

import math

import numpy as np
import torch
from hostile import probe_table_tests, public_api, rejects, valid_or_rejects

from arlib.speech import conditions
from arlib.speech.conditions import add_noise, reverberate, speed_perturb, synthetic_rir

COVERED = {
    "arlib.speech.conditions.add_noise", "arlib.speech.conditions.reverberate",
    "arlib.speech.conditions.speed_perturb", "arlib.speech.conditions.synthetic_rir",
}


def test_covered_is_exactly_the_public_api_of_conditions():
    mine = {n for n in public_api() if n.startswith("arlib.speech.conditions.")}
    assert mine == COVERED, f"missing {sorted(mine - COVERED)}, stale {sorted(COVERED - mine)}"


WAVE = torch.sin(torch.arange(800) / 5.0)  # (T,) float32
RIR = torch.tensor([1.0, 0.5, 0.25])


def g(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def wave_of(n: int):
    """The contract of every condition that keeps the length: float32 (n,), finite."""
    return lambda out: isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.shape == (n,) \
        and bool(torch.isfinite(out).all())


BAD_WAVES = [  # (id, value): not a 1-D, finite, non-empty floating waveform
    ("none", None), ("list", [0.1, 0.2]), ("numpy", np.zeros(8, dtype=np.float32)), ("int", torch.arange(8)),
    ("bool", torch.ones(8, dtype=torch.bool)), ("complex", torch.ones(8, dtype=torch.complex64)),
    ("2d", torch.zeros(2, 8)), ("scalar", torch.tensor(0.5)), ("empty", torch.zeros(0)),
    ("nan", torch.tensor([0.1, math.nan])), ("inf", torch.tensor([0.1, math.inf])),
]

PROBES = [
    # --- add_noise ---
    *[(f"add_noise-wave-{name}", lambda bad=bad: rejects(add_noise, bad, 10, g(), arg="wave"))
      for name, bad in BAD_WAVES],
    ("add_noise-silent-wave", lambda: rejects(add_noise, torch.zeros(100), 10, g(), arg="wave")),
    ("add_noise-beyond-float32", lambda: rejects(add_noise, torch.full((4,), 1e200, dtype=torch.float64), 10, g(),
                                                 arg="wave")),
    *[(f"add_noise-snr-{name}", lambda bad=bad: rejects(add_noise, WAVE, bad, g(), arg="snr_db")) for name, bad in [
        ("nan", math.nan), ("inf", math.inf), ("-inf", -math.inf), ("str", "20"), ("none", None), ("bool", True),
        ("tensor", torch.tensor(20.0)), ("list", [20]), ("huge", 1e6), ("tiny", -400.0),
    ]],
    *[(f"add_noise-generator-{name}", lambda bad=bad: rejects(add_noise, WAVE, 10, bad, arg="generator"))
      for name, bad in [("none", None), ("int", 0), ("numpy", np.random.default_rng(0))]],
    *[(f"add_noise-noise-{name}", lambda bad=bad: rejects(add_noise, WAVE, 10, g(), noise=bad, arg="noise"))
      for name, bad in BAD_WAVES if name != "none"],
    ("add_noise-silent-noise", lambda: rejects(add_noise, WAVE, 10, g(), noise=torch.zeros(50), arg="noise")),
    ("add_noise-silent-stretch-of-noise", lambda: [valid_or_rejects(  # silent where the drawn offset falls, or not
        add_noise, WAVE[:3], 10, g(seed), noise=torch.nn.functional.one_hot(torch.tensor(50), 100).float(),
        arg="noise", contract=wave_of(3)) for seed in range(20)]),
    ("add_noise-numpy-snr", lambda: valid_or_rejects(add_noise, WAVE, np.float32(5.0), g(), arg="snr_db",
                                                     contract=wave_of(800))),
    ("add_noise-int-snr", lambda: valid_or_rejects(add_noise, WAVE, 20, g(), arg="snr_db", contract=wave_of(800))),
    ("add_noise-ends-of-the-range", lambda: [valid_or_rejects(add_noise, WAVE, snr, g(), arg="snr_db",
                                                              contract=wave_of(800)) for snr in (-100, 100)]),
    ("add_noise-one-sample", lambda: valid_or_rejects(add_noise, torch.tensor([0.5]), 0, g(), arg="wave",
                                                      contract=wave_of(1))),
    ("add_noise-float16-wave", lambda: valid_or_rejects(add_noise, WAVE.half(), 10, g(), arg="wave",
                                                        contract=wave_of(800))),
    ("add_noise-float64-noise-longer", lambda: valid_or_rejects(add_noise, WAVE, 10, g(), arg="noise",
                                                                noise=torch.randn(5000, dtype=torch.float64),
                                                                contract=wave_of(800))),
    ("add_noise-wave-needing-grad", lambda: valid_or_rejects(add_noise, WAVE.clone().requires_grad_(), 10, g(),
                                                             arg="wave", contract=wave_of(800))),
    # --- synthetic_rir ---
    *[(f"synthetic_rir-rt60-{name}", lambda bad=bad: rejects(synthetic_rir, bad, generator=g(), arg="rt60"))
      for name, bad in [("zero", 0), ("negative", -0.3), ("nan", math.nan), ("inf", math.inf), ("long", 10.5),
                        ("str", "0.3"), ("none", None), ("bool", True), ("tensor", torch.tensor(0.3)),
                        ("under-one-sample", 1e-5)]],
    *[(f"synthetic_rir-sample_rate-{name}", lambda bad=bad: rejects(synthetic_rir, 0.3, bad, generator=g(),
                                                                    arg="sample_rate"))
      for name, bad in [("zero", 0), ("negative", -16000), ("float", 16000.0), ("str", "16k"), ("none", None),
                        ("bool", True), ("huge", 10**9)]],
    *[(f"synthetic_rir-generator-{name}", lambda bad=bad: rejects(synthetic_rir, 0.3, generator=bad, arg="generator"))
      for name, bad in [("none", None), ("int", 0), ("numpy", np.random.default_rng(0))]],
    ("synthetic_rir-generator-missing", lambda: rejects(synthetic_rir, 0.3, arg="generator")),
    ("synthetic_rir-generator-positional", lambda: rejects(synthetic_rir, 0.3, 16000, g(), arg="positional")),
    *[(f"synthetic_rir-length-{name}", lambda bad=bad: rejects(synthetic_rir, 0.3, generator=g(), length=bad,
                                                               arg="length"))
      for name, bad in [("zero", 0), ("one", 1), ("negative", -5), ("float", 100.0), ("str", "100"), ("bool", True),
                        ("huge", 10**12)]],
    *[(f"synthetic_rir-direct-{name}", lambda bad=bad: rejects(synthetic_rir, 0.3, generator=g(), direct=bad,
                                                               arg="direct"))
      for name, bad in [("int", 1), ("str", "yes"), ("none", None)]],
    *[(f"synthetic_rir-drr-{name}", lambda bad=bad: rejects(synthetic_rir, 0.3, generator=g(), drr_db=bad,
                                                            arg="drr_db"))
      for name, bad in [("nan", math.nan), ("inf", math.inf), ("str", "0"), ("huge", 1e4), ("tiny", -1e4),
                        ("bool", False)]],
    ("synthetic_rir-drr-without-direct", lambda: rejects(synthetic_rir, 0.3, generator=g(), direct=False, drr_db=0.0,
                                                         arg="drr_db")),
    ("synthetic_rir-drr-of-a-vanishing-tail", lambda: rejects(synthetic_rir, 1e-7, generator=g(), length=50,
                                                              drr_db=0.0, arg="rt60")),
    ("synthetic_rir-vanishing-tail-is-an-impulse", lambda: valid_or_rejects(
        synthetic_rir, 1e-7, generator=g(), length=50, arg="rt60",
        contract=lambda h: h.shape == (50,) and float(h[0]) == 1.0 and not h[1:].any())),
    ("synthetic_rir-numpy-numbers", lambda: valid_or_rejects(
        synthetic_rir, np.float64(0.2), np.int64(8000), generator=g(), length=np.int32(400), arg="rt60",
        contract=wave_of(400))),
    ("synthetic_rir-ends-of-the-range", lambda: valid_or_rejects(synthetic_rir, 10, 100, generator=g(), arg="rt60",
                                                                 contract=wave_of(1000))),
    ("synthetic_rir-two-samples", lambda: valid_or_rejects(synthetic_rir, 0.3, generator=g(), length=2, arg="length",
                                                           contract=wave_of(2))),
    # --- reverberate ---
    *[(f"reverberate-wave-{name}", lambda bad=bad: rejects(reverberate, bad, RIR, arg="wave"))
      for name, bad in BAD_WAVES],
    *[(f"reverberate-rir-{name}", lambda bad=bad: rejects(reverberate, WAVE, bad, arg="rir"))
      for name, bad in BAD_WAVES],
    ("reverberate-silent-rir", lambda: rejects(reverberate, WAVE, torch.zeros(5), arg="rir")),
    ("reverberate-silent-wave", lambda: valid_or_rejects(reverberate, torch.zeros(50), RIR, arg="wave",
                                                         contract=lambda y: wave_of(50)(y) and not y.any())),
    ("reverberate-delay-past-the-end", lambda: valid_or_rejects(
        reverberate, WAVE[:4], torch.tensor([0.0] * 10 + [1.0]), arg="rir",
        contract=lambda y: wave_of(4)(y) and not y.any())),
    ("reverberate-rir-longer-than-wave", lambda: valid_or_rejects(reverberate, WAVE[:10], torch.randn(5000), arg="rir",
                                                                  contract=wave_of(10))),
    ("reverberate-beyond-float32", lambda: rejects(reverberate, WAVE.double() * 1e300, RIR, arg="wave")),
    ("reverberate-huge-rir", lambda: valid_or_rejects(reverberate, WAVE, RIR.double() * 1e300, arg="rir",
                                                      contract=wave_of(800))),
    ("reverberate-one-sample", lambda: valid_or_rejects(reverberate, torch.tensor([0.3]), RIR, arg="wave",
                                                        contract=lambda y: torch.allclose(y, torch.tensor([0.3])))),
    ("reverberate-negative-peak", lambda: valid_or_rejects(
        reverberate, -WAVE.abs(), RIR, arg="wave",
        contract=lambda y: abs(float(y.abs().max()) - float(WAVE.abs().max())) < 1e-6)),
    # --- speed_perturb ---
    *[(f"speed_perturb-wave-{name}", lambda bad=bad: rejects(speed_perturb, bad, 1.1, arg="wave"))
      for name, bad in BAD_WAVES],
    *[(f"speed_perturb-factor-{name}", lambda bad=bad: rejects(speed_perturb, WAVE, bad, arg="factor"))
      for name, bad in [("zero", 0), ("negative", -1.1), ("nan", math.nan), ("inf", math.inf), ("slow", 0.49),
                        ("fast", 2.01), ("str", "1.1"), ("none", None), ("bool", True), ("tensor", torch.tensor(1.1)),
                        ("fraction-list", [11, 10])]],
    ("speed_perturb-too-short", lambda: rejects(speed_perturb, torch.tensor([0.5]), 2.0, arg="wave")),
    ("speed_perturb-one-sample-slower", lambda: valid_or_rejects(speed_perturb, torch.tensor([0.5]), 0.5, arg="wave",
                                                                 contract=wave_of(2))),
    ("speed_perturb-numpy-factor", lambda: valid_or_rejects(speed_perturb, WAVE, np.float32(0.9), arg="factor",
                                                            contract=wave_of(round(800 / 0.9)))),
    ("speed_perturb-int-factor", lambda: valid_or_rejects(speed_perturb, WAVE, 2, arg="factor",
                                                          contract=wave_of(400))),
    ("speed_perturb-odd-factor", lambda: valid_or_rejects(speed_perturb, WAVE, 1.0 + math.pi / 1000, arg="factor",
                                                          contract=wave_of(round(800 / (1.0 + math.pi / 1000))))),
    ("speed_perturb-float16", lambda: valid_or_rejects(speed_perturb, WAVE.half(), 1.1, arg="wave",
                                                       contract=wave_of(round(800 / 1.1)))),
    ("speed_perturb-identity-copies", lambda: valid_or_rejects(
        speed_perturb, WAVE, 1.0, arg="factor", contract=lambda y: torch.equal(y, WAVE) and y is not WAVE)),
]


test_probe, test_probe_ids_are_unique, test_every_covered_name_is_probed = probe_table_tests(PROBES, COVERED)


def test_all_lists_exactly_the_covered_names():
    assert set(conditions.__all__) == {name.rsplit(".", 1)[1] for name in COVERED}


def test_inputs_are_never_modified():
    wave, rir, noise = WAVE.clone(), RIR.clone(), torch.randn(100)
    before = (wave.clone(), rir.clone(), noise.clone())
    add_noise(wave, 5, g(), noise=noise)
    reverberate(wave, rir)
    speed_perturb(wave, 0.9)
    assert all(torch.equal(a, b) for a, b in zip((wave, rir, noise), before, strict=True))
