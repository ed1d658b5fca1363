"""Chapter 4's evaluation and its added methods: KID, precision and recall, nearest distances and the
bootstrap (arlib.vision.sample_quality), finite scalar quantization (arlib.vision.fsq) and MaskGIT
(arlib.vision.maskgit), each checked against a definition written out the slow way."""

import copy
import itertools
import math

import pytest
import torch

from arlib.vision import fsq as fsq_mod
from arlib.vision import maskgit as mg
from arlib.vision import sample_quality as sq

# --- sample quality --------------------------------------------------------------------------------


def _kid_by_loops(a, b):
    """Unbiased MMD^2 with k(x, y) = (x.y/d + 1)^3, pair by pair."""
    d = a.shape[1]

    def k(x, y):
        return (float(x @ y) / d + 1) ** 3
    n, m = len(a), len(b)
    aa = sum(k(a[i], a[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    bb = sum(k(b[i], b[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    ab = sum(k(a[i], b[j]) for i in range(n) for j in range(m)) / (n * m)
    return aa + bb - 2 * ab


def test_kid_is_the_unbiased_mmd_and_is_near_zero_for_one_distribution():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(9, 4, generator=g, dtype=torch.float64), torch.randn(7, 4, generator=g, dtype=torch.float64)
    assert sq.kernel_distance(a, b) == pytest.approx(_kid_by_loops(a, b), rel=1e-10)
    same = [sq.kernel_distance(torch.randn(400, 8, generator=g), torch.randn(400, 8, generator=g)) for _ in range(5)]
    shifted = sq.kernel_distance(torch.randn(400, 8, generator=g), torch.randn(400, 8, generator=g) + 0.5)
    assert abs(sum(same) / 5) < 0.02 < shifted  # unbiased: averages to ~0; a shift of 0.5 sd is far above


def test_kid_with_bootstrap_counts_leaves_out_copies_of_a_row():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(6, 3, generator=g, dtype=torch.float64), torch.randn(5, 3, generator=g, dtype=torch.float64)
    wa = torch.tensor([2.0, 0, 1, 1, 0, 2])
    wb = torch.tensor([1.0, 1, 3, 0, 0])
    kernel = sq._polynomial_kernel
    got = sq._mmd2(kernel(a, a), kernel(b, b), kernel(a, b), wa, wb)
    ra = [i for i, c in enumerate(wa.long().tolist()) for _ in range(c)]  # the resampled rows
    rb = [i for i, c in enumerate(wb.long().tolist()) for _ in range(c)]

    def within(x, rows):
        pairs = [(i, j) for i, j in itertools.permutations(range(len(rows)), 2) if rows[i] != rows[j]]
        return sum((float(x[rows[i]] @ x[rows[j]]) / 3 + 1) ** 3 for i, j in pairs) / len(pairs)
    cross = sum((float(a[i] @ b[j]) / 3 + 1) ** 3 for i in ra for j in rb) / (len(ra) * len(rb))
    assert got == pytest.approx(within(a, ra) + within(b, rb) - 2 * cross, rel=1e-10)


def _precision_by_loops(real, fake, k):
    def radius(x, i):
        return sorted(float((x[i] - x[j]).norm()) for j in range(len(x)) if j != i)[k - 1]
    radii = [radius(real, i) for i in range(len(real))]
    return sum(any(float((f - real[i]).norm()) <= radii[i] for i in range(len(real))) for f in fake) / len(fake)


def test_precision_and_recall_follow_their_definition_and_catch_dropped_modes():
    g = torch.Generator().manual_seed(2)
    real, fake = torch.randn(30, 2, generator=g), torch.randn(25, 2, generator=g) * 1.5
    precision, recall = sq.precision_recall(real, fake, k=3)
    assert precision == pytest.approx(_precision_by_loops(real, fake, 3))
    assert recall == pytest.approx(_precision_by_loops(fake, real, 3))
    # two clusters of real images; samples from one only: realistic (precision 1) but half the data (recall 1/2)
    centres = torch.tensor([[0.0, 0.0], [50.0, 0.0]])
    real = centres[torch.arange(400) % 2] + torch.randn(400, 2, generator=g)
    fake = centres[0] + torch.randn(200, 2, generator=g)
    precision, recall = sq.precision_recall(real, fake)
    assert precision > 0.95 and abs(recall - 0.5) < 0.05
    assert sq.precision_recall(real, fake + 1000) == (0.0, 0.0)


def test_nearest_distances_are_the_brute_force_minimum():
    g = torch.Generator().manual_seed(3)
    q, bank = torch.randn(11, 5, generator=g), torch.randn(40, 5, generator=g)
    brute = torch.stack([min((x - y).norm() for y in bank) for x in q]).double()
    assert torch.allclose(sq.nearest_distances(q, bank, chunk=4), brute)
    assert torch.allclose(sq.nearest_distances(bank[:3], bank), torch.zeros(3, dtype=torch.float64), atol=1e-6)


def test_bootstrap_intervals_cover_the_value_and_separate_only_real_differences():
    g = torch.Generator().manual_seed(4)
    reference = torch.randn(300, 6, generator=g)
    labels = torch.arange(300) % 3
    twin = sq.score_samples(torch.randn(300, 6, generator=g), labels, labels, reference, boots=60)
    other = sq.score_samples(torch.randn(300, 6, generator=g), labels, labels, reference, boots=60)
    far = sq.score_samples(torch.randn(300, 6, generator=g) + 0.7, (labels + 1) % 3, labels, reference, boots=60)
    for name in ("frechet", "kid", "precision", "recall"):  # the resamples vary: intervals of positive width
        assert twin[name]["high"] - twin[name]["low"] > 0 and len(set(twin[name]["replicates"])) > 10
    assert twin["accuracy"]["value"] == 1 and far["accuracy"]["value"] == 0 and far["per_class"] == [0.0] * 3
    for name in ("frechet", "kid"):
        _, low, high = sq.difference(twin, other, name)
        assert low < 0 < high  # two draws of one distribution: no difference claimed
        _, low, high = sq.difference(far, twin, name)
        assert low > 0  # a shift of 0.7 sd: a difference beyond its interval
    assert sq.difference(far, twin, "precision")[2] < 0


# --- finite scalar quantization --------------------------------------------------------------------


def test_fsq_rounds_each_channel_to_its_levels_and_numbers_every_code_once():
    quantizer = fsq_mod.FiniteScalarQuantizer((8, 5, 3))
    assert quantizer.num_codes == 120
    z = torch.linspace(-6, 6, 2001)
    z = torch.stack(torch.meshgrid(z[::40], z[::40], z[::40], indexing="ij")).reshape(3, -1)  # (3, M)
    codes, indices, loss = quantizer(z.T.reshape(1, -1, 1, 3).permute(0, 3, 1, 2))  # as (B, d, h, w)
    assert float(loss) == 0
    values = [sorted(set(codes[0, c].flatten().tolist())) for c in range(3)]
    assert values[0] == [j / 4 for j in range(-4, 4)]  # L = 8: -1 .. 0.75, a half-step shift
    assert values[1] == [-1.0, -0.5, 0.0, 0.5, 1.0] and values[2] == [-1.0, 0.0, 1.0]
    assert sorted(set(indices.flatten().tolist())) == list(range(120))  # a sweep reaches every code
    grid = quantizer.indices_to_codes(torch.arange(120))
    assert torch.equal(quantizer.codes_to_indices(grid), torch.arange(120))
    assert quantizer.bound(torch.zeros(3)).abs().max() < 1e-6  # z = 0 maps to the middle level


def test_fsq_passes_gradients_straight_through_the_rounding():
    quantizer = fsq_mod.FiniteScalarQuantizer((5, 6))
    z = torch.randn(2, 2, 3, 3, requires_grad=True)
    codes, _, _ = quantizer(z)
    codes.sum().backward()
    bounded = z.detach().clone().requires_grad_(True)
    (quantizer.bound(bounded.permute(0, 2, 3, 1)) / quantizer.half_width).sum().backward()
    assert torch.allclose(z.grad, bounded.grad) and bool((z.grad > 0).all())


def test_fsq_autoencoder_encodes_and_decodes_consistently():
    torch.manual_seed(0)
    model = fsq_mod.FSQVAE((8, 6, 5), code_dim=8, width=8).eval()
    x = torch.rand(3, 1, 28, 28)
    recon, indices, _ = model(x)
    assert indices.shape == (3, 7, 7) and int(indices.max()) < 240
    assert torch.allclose(model.decode(model.encode(x)), recon, atol=1e-6)


# --- MaskGIT -----------------------------------------------------------------------------------------


def _tiny_maskgit(seed=0, K=6):
    torch.manual_seed(seed)
    return mg.MaskGITModel(K, num_classes=3, n_layer=1, n_head=2, n_embd=16).eval()


def test_maskgit_attends_both_ways_and_masks_the_cosine_share():
    model = _tiny_maskgit()
    tokens = torch.randint(0, 6, (1, 49))
    changed = tokens.clone()
    changed[0, 48] = (changed[0, 48] + 1) % 6
    labels = torch.tensor([1])
    assert not torch.allclose(model(labels, tokens)[0, 0], model(labels, changed)[0, 0])  # the first sees the last
    assert mg.mask_schedule(0) == 1 and abs(mg.mask_schedule(1)) < 1e-12
    # the loss scores masked positions only: counts of ceil(cos(pi r / 2) 49), mean share about 2/pi
    counts = []
    original = torch.nn.functional.cross_entropy

    def counting(logits, target):
        counts.append(len(target))
        return original(logits, target)
    grids = torch.randint(0, 6, (400, 7, 7))
    torch.nn.functional.cross_entropy = counting
    try:
        mg.maskgit_loss(model, grids, torch.zeros(400, dtype=torch.long), torch.Generator().manual_seed(0))
    finally:
        torch.nn.functional.cross_entropy = original
    share = counts[0] / (400 * 49)
    assert abs(share - (2 / math.pi + 0.5 / 49)) < 0.03  # E[ceil(gamma(r) N)] / N, gamma(r) = cos(pi r / 2)


class _Recorder(torch.nn.Module):
    """Wraps a MaskGIT model and keeps the tokens of every forward pass."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.seen = inner, []

    def forward(self, labels, tokens):
        self.seen.append(tokens.clone())
        return self.inner(labels, tokens)


def test_maskgit_decoding_keeps_decided_tokens_and_unmasks_on_schedule():
    model = _tiny_maskgit(1)
    recorder = _Recorder(model)
    recorder.module = model  # the sampler accepts a wrapper with the model as its module
    grids, passes = mg.sample_maskgit(recorder, torch.tensor([0, 2]), steps=8,
                                      generator=torch.Generator().manual_seed(0), return_passes=True)
    assert passes == 8 and len(recorder.seen) == 8 and int(grids.max()) < 6
    masked_counts = [(t == 6).sum(1).tolist() for t in recorder.seen]
    expected = [49] + [max(1, math.floor(math.cos(math.pi / 2 * t / 8) * 49)) for t in range(1, 8)]
    assert masked_counts == [[m, m] for m in expected]
    for before, after in zip(recorder.seen, recorder.seen[1:] + [grids.flatten(1)]):
        kept = before != 6
        assert torch.equal(after[kept], before[kept])  # a decided token never changes


def test_maskgit_masks_again_the_least_confident_draws(monkeypatch):
    model = _tiny_maskgit(3)
    recorder = _Recorder(model)
    recorder.module = model
    draws = []
    original = mg.draw

    def recording(logits, generator=None):
        out = original(logits, generator)
        draws.append((logits.clone(), out.clone()))
        return out
    monkeypatch.setattr(mg, "draw", recording)
    final = mg.sample_maskgit(recorder, torch.tensor([0, 1, 2]), steps=6, choice_temperature=0.0,
                              generator=torch.Generator().manual_seed(1))
    states = recorder.seen + [final.flatten(1)]
    for t in range(5):  # without noise, the kept draws are the most probable ones
        logits, drawn = draws[t]
        confidence = logits.log_softmax(-1).gather(1, drawn[:, None]).view(3, 49)
        before, after = states[t] == 6, states[t + 1] == 6
        for row in range(3):
            kept, again = confidence[row][before[row] & ~after[row]], confidence[row][after[row]]
            assert len(kept) and len(again) and kept.min() >= again.max()


@pytest.mark.parametrize("steps, schedule", [(8, None), (4, lambda r: 1 - r), (6, lambda r: 1 - math.sqrt(r)),
                                             (60, None), (5, lambda r: 1.5)])
def test_maskgit_follows_its_decoding_plan(steps, schedule):
    """The sampler's masked counts are those the plan implies, for the default plan and for one handed over."""
    plan = mg.decoding_plan(steps, 49) if schedule is None else mg.decoding_plan(steps, 49, schedule)
    assert len(plan) == steps and sum(plan) == 49 and min(plan) >= 0
    model = _tiny_maskgit(4)
    recorder = _Recorder(model)
    recorder.module = model
    grids = mg.sample_maskgit(recorder, torch.tensor([0, 1]), steps, plan=plan if schedule else None,
                              generator=torch.Generator().manual_seed(2))
    masked_counts = [(t == 6).sum(1).tolist() for t in recorder.seen] + [(grids.flatten(1) == 6).sum(1).tolist()]
    expected = [49 - sum(plan[:t]) for t in range(steps + 1)]
    assert masked_counts == [[m, m] for m in expected]


def test_maskgit_decoding_plan_by_hand():
    assert mg.decoding_plan(8, 49) == [1, 3, 5, 6, 7, 9, 9, 9]  # 48, 45, 40, 34, 27, 18, 9 still masked
    assert mg.decoding_plan(4, 49, lambda r: 1 - r) == [13, 12, 12, 12]  # 36, 24, 12
    assert mg.decoding_plan(1, 49) == [49]
    assert mg.decoding_plan(3, 1) == [0, 0, 1]  # one token: the clamps keep it masked until the last step
    assert mg.decoding_plan(4, 10, lambda r: 0.0) == [9, 0, 0, 1]  # at least 1 stays masked
    assert mg.decoding_plan(4, 10, lambda r: 2.0) == [1, 1, 1, 7]  # at most one fewer than before
    model = _tiny_maskgit(5)
    labels = torch.tensor([0, 2, 1])
    default = mg.sample_maskgit(model, labels, 8, generator=torch.Generator().manual_seed(3))
    explicit = mg.sample_maskgit(model, labels, 8, plan=mg.decoding_plan(8, 49),
                                 generator=torch.Generator().manual_seed(3))
    assert torch.equal(default, explicit)


def test_maskgit_with_one_step_draws_every_token_from_the_model():
    model = _tiny_maskgit(2, K=4)
    labels = torch.zeros(4000, dtype=torch.long)
    grids = mg.sample_maskgit(model, labels, steps=1, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        p = model(labels[:1], torch.full((1, 49), 4))[0, 0].softmax(-1)  # position 0, all masked
    observed = torch.bincount(grids[:, 0, 0], minlength=4).double()
    chi2 = float(((observed - 4000 * p) ** 2 / (4000 * p)).sum())
    assert chi2 < 16.3  # chi-square, 3 degrees of freedom, p = 0.001


# --- LANTERN with a drafter ----------------------------------------------------------------------------

from tiny_models import tiny_gpt  # noqa: E402

from arlib.vision import hmar as hm  # noqa: E402
from arlib.vision import lantern as lt  # noqa: E402
from arlib.vision.jacobi import lantern_neighbors  # noqa: E402


def test_relaxed_law_is_p_without_relaxation_and_moves_mass_onto_the_draft_with_it():
    g = torch.Generator().manual_seed(5)
    V = 12
    table = lantern_neighbors(torch.randn(V, 3, generator=g), V)
    for _ in range(5):
        p = torch.rand(V, generator=g, dtype=torch.float64) ** 3
        p /= p.sum()
        x = int(torch.randint(V, (1,), generator=g))
        assert torch.allclose(lt.relaxed_token_law(p, x, table, 0.0, 3), p, atol=1e-12)  # exact
        law = lt.relaxed_token_law(p, x, table, 0.3, 3)
        assert law.sum().item() == pytest.approx(1) and law[x] >= p[x] - 1e-12
        others = table[x, 1:4]
        run = int((torch.cumsum(p[others], 0) <= 0.3 + 1e-12).sum())
        assert law[x].item() == pytest.approx(min(1.0, float(p[x] + p[others[:run]].sum())))
        if run:  # a relaxed rejection never lands on x's k + 1 nearest codes
            assert float(law[table[x, 1:5]].sum()) == 0


def _first_tokens(delta, runs, V=4, seed=6):
    target, drafter = tiny_gpt(seed, vocab_size=V), tiny_gpt(seed + 1, vocab_size=V, n_layer=1)
    table = lantern_neighbors(torch.randn(V, 2, generator=torch.Generator().manual_seed(seed)), V)
    prefix = torch.tensor([[1]])
    g = torch.Generator().manual_seed(seed)
    outs = [lt.lantern_speculative(target, drafter, prefix, 2, V, 3, neighbors=table if delta else None, delta=delta,
                                   k=1, generator=g)[0] for _ in range(runs)]
    return target, drafter, table, torch.stack(outs)


def test_lantern_without_relaxation_samples_the_target_exactly():
    V, runs = 4, 3000
    target, _, _, outs = _first_tokens(0.0, runs)
    with torch.no_grad():
        p1 = target(torch.tensor([[1]]))[0, -1].double().softmax(-1)
        joint = torch.stack([p1[a] * target(torch.tensor([[1, a]]))[0, -1].double().softmax(-1) for a in range(V)])
    observed = torch.bincount(outs[:, 0] * V + outs[:, 1], minlength=V * V).double()
    expected = runs * joint.flatten()
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    assert chi2 < 37.7  # chi-square, 15 degrees of freedom, p = 0.001


def _greedy(model, prefix, length):
    tokens = prefix
    with torch.no_grad():
        for _ in range(length):
            tokens = torch.cat([tokens, model(tokens)[:, -1:].argmax(-1)], 1)
    return tokens[0, prefix.shape[1]:]


def test_lantern_keeps_both_caches_right_across_rounds():
    """With top_k = 1 the target is deterministic: any drafter must give its greedy sequence; a drafter
    that is the target itself has every draft accepted (5 rounds of 3 drafts and a bonus token)."""
    V = 9
    target = tiny_gpt(9, vocab_size=V, std=0.3)
    prefix = torch.tensor([[2, 5]])
    expected = _greedy(target, prefix, 20)
    assert len(set(expected.tolist())) > 1
    out, stats = lt.lantern_speculative(target, target, prefix, 20, V, 3, top_k=1,
                                        generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, expected) and stats["accepted"] == [3] * 5 and stats["passes"] == 5
    table = lantern_neighbors(torch.randn(V, 2, generator=torch.Generator().manual_seed(1)), V)
    for seed in (1, 4):  # the target with noise: some drafts pass, some not (rejections, crops and catch-ups)
        drafter = copy.deepcopy(target)
        with torch.no_grad():
            for w in drafter.parameters():
                w.add_(torch.randn(w.shape, generator=torch.Generator().manual_seed(seed)) * 0.15)
        out, stats = lt.lantern_speculative(target, drafter, prefix, 20, V, 3, top_k=1,
                                            generator=torch.Generator().manual_seed(seed))
        assert torch.equal(out, expected) and 5 < stats["passes"] < 20 and max(stats["accepted"]) >= 1
        relaxed, _ = lt.lantern_speculative(target, drafter, prefix, 20, V, 3, neighbors=table, delta=0.5, k=2,
                                            top_k=1, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(relaxed, expected)  # a one-hot p has no mass to move: the test stays exact
    assert lt.lantern_speculative(target, target, prefix, 0, V)[0].dtype == torch.long


def test_lantern_relaxed_first_token_follows_the_relaxed_law():
    V, runs = 4, 3000
    target, drafter, table, outs = _first_tokens(0.6, runs)
    with torch.no_grad():
        x = int(drafter(torch.tensor([[1]]))[0, -1].argmax())  # the drafter's top-1 proposal
        p = target(torch.tensor([[1]]))[0, -1].double().softmax(-1)
    law = lt.relaxed_token_law(p, x, table, 0.6, 1)
    assert not torch.allclose(law, p, atol=0.02)  # the case moves the law
    observed = torch.bincount(outs[:, 0], minlength=V).double()
    support = law > 0
    chi2 = float(((observed[support] - runs * law[support]) ** 2 / (runs * law[support])).sum())
    assert chi2 < 16.3 and observed[~support].sum() == 0


# --- HMAR ----------------------------------------------------------------------------------------------


def test_hmar_mask_is_exactly_block_diagonal():
    mask = hm.hmar_mask((1, 2, 3))
    blocks = torch.block_diag(torch.ones(1, 1), torch.ones(4, 4), torch.ones(9, 9)).bool()
    assert torch.equal(mask, blocks)


def _tiny_hmar(seed=0):
    torch.manual_seed(seed)
    return hm.HMARModel(8, 3, scales=(1, 2, 3), num_classes=2, n_layer=2, n_head=2, n_embd=16, mask_layers=1).eval()


def test_hmar_scales_see_only_their_own_input():
    model = _tiny_hmar()
    labels = torch.tensor([0, 2])
    inputs = [torch.randn(2, 4, 3), torch.randn(2, 9, 3)]
    whole = model(labels, inputs)
    per_scale = torch.cat([model.scale_logits(labels, 0, None), model.scale_logits(labels, 1, inputs[0]),
                           model.scale_logits(labels, 2, inputs[1])], 1)
    assert torch.allclose(whole, per_scale, atol=1e-5)
    changed = model(labels, [inputs[0] + 1, inputs[1]])
    assert torch.allclose(changed[:, 5:], whole[:, 5:], atol=1e-6)  # scale 3 ignores scale 2's input
    assert not torch.allclose(changed[:, 1:5], whole[:, 1:5])
    codes = torch.randn(2, 14, 3)
    masked = torch.zeros(14, dtype=torch.bool)
    masked[[2, 7, 8]] = True
    both = model.masked_forward(labels, inputs, codes, masked)
    alone = model.masked_scale_logits(labels, 2, inputs[1], codes[:, 5:], masked[5:].expand(2, -1))
    assert torch.allclose(both[:, 5:], alone, atol=1e-5)


def test_hmar_sampling_takes_one_pass_per_scale_plus_its_mask_steps():
    from arlib.vision.vq import MultiScaleQuantizer

    model = _tiny_hmar(1)
    quantizer = MultiScaleQuantizer(8, 3, (1, 2, 3)).eval()
    labels = torch.tensor([0, 1, 2])
    g = torch.Generator().manual_seed(0)
    maps, passes = hm.sample_hmar(model, quantizer, labels, schedule=((1,), (1, 3), (2, 3, 4)), generator=g,
                                  cfg_scale=2.0, return_passes=True)
    assert passes == 3 + 1 + 2 and [tuple(m.shape) for m in maps] == [(3, 1, 1), (3, 2, 2), (3, 3, 3)]
    _, passes = hm.sample_hmar(model, quantizer, labels, schedule=((1,), (4,), (9,)), generator=g, return_passes=True)
    assert passes == 3
    with pytest.raises(ValueError, match="schedule"):
        hm.sample_hmar(model, quantizer, labels, schedule=((1,), (1, 2), (9,)))


def test_hmar_masked_steps_keep_the_most_confident_tokens(monkeypatch):
    from arlib.vision.vq import MultiScaleQuantizer

    model = _tiny_hmar(3)
    quantizer = MultiScaleQuantizer(8, 3, (1, 2, 3)).eval()
    draws, calls = [], []
    original_draw, original_masked = hm.draw, model.masked_scale_logits

    def recording_draw(logits, generator=None):
        out = original_draw(logits, generator)
        draws.append((logits.clone(), out.clone()))
        return out

    def recording_masked(labels, k, block, codes, hidden):
        calls.append((k, codes.clone(), hidden.clone()))
        return original_masked(labels, k, block, codes, hidden)
    monkeypatch.setattr(hm, "draw", recording_draw)
    monkeypatch.setattr(model, "masked_scale_logits", recording_masked)
    maps = hm.sample_hmar(model, quantizer, torch.tensor([0, 1]), schedule=((1,), (4,), (2, 3, 4)),
                          generator=torch.Generator().manual_seed(2))
    assert [k for k, _, _ in calls] == [2, 2] and [int(h[0].sum()) for _, _, h in calls] == [7, 4]
    logits, drawn = draws[2]  # scale 3's next-scale pass
    confidence = logits.softmax(-1).gather(1, drawn[:, None]).view(2, 9)
    for row in range(2):
        kept = ~calls[0][2][row]
        assert int(kept.sum()) == 2 and confidence[row][kept].min() >= confidence[row][~kept].max()
    first, second = calls
    still_kept = ~second[2]
    assert torch.equal(first[1][~first[2]], second[1][~first[2]])  # kept tokens never change
    final = quantizer.vq.codebook[maps[2].flatten(1)]
    assert torch.equal(final[still_kept], second[1][still_kept])


def test_hmar_second_stage_trains_only_the_mask_branch():
    model = _tiny_hmar(2).train()
    model.start_mask_branch()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("mask_", "token_proj")) for n in trainable)
    assert torch.equal(model.mask_head.weight, model.ns_head.weight)  # started from the next-scale branch
