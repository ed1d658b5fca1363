"""Tests of arlib.decoding.speculative (LayerSkip with one shared cache) and of the dynamic draft length of the
chain decoder (Hugging Face's heuristic schedule, ModelDrafter's confidence stop)."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from tiny_models import tiny_gpt

import arlib
import arlib.decoding.speculative as speculative
from arlib.decoding.draft_heads import EarlyExitModel, ExitHeads
from arlib.decoding.drafters import Draft, Drafter, ModelDrafter, NGramDrafter, SamplingOptions
from arlib.decoding.speculative import layerskip_generate, speculative_generate
from arlib.text.sampling import generate, sample_probs

PLAIN = SamplingOptions()


def gen(seed):
    return torch.Generator().manual_seed(seed)


def tiny(seed=0, n_layer=3, vocab_size=11, std=0.5):
    return tiny_gpt(seed, n_layer, vocab_size, block_size=48, std=std)


def noisy_exits(target, seed=1, scale=0.3) -> ExitHeads:
    """Exit heads started as the target's logit lens, then perturbed: drafts that differ from the target's."""
    c = target.config
    exits = ExitHeads(c.n_layer, c.n_embd, c.vocab_size)
    exits.copy_from(target)
    g = gen(seed)
    with torch.no_grad():
        for w in exits.parameters():
            w.add_(torch.randn(w.shape, generator=g) * scale)
    return exits.eval()


@pytest.fixture(scope="module")
def target():
    return tiny()


@pytest.fixture(scope="module")
def exits(target):
    return noisy_exits(target)


def prompt(T=6, seed=5, V=11):
    return torch.randint(0, V, (T,), generator=gen(seed))


# --- LayerSkip: greedy equality, shared cache, no recomputation -------------------------------------


@pytest.mark.parametrize("schedule", ["fixed", "heuristic"])
@pytest.mark.parametrize("gamma", [1, 3, 6])
@pytest.mark.parametrize("exit_layer", [1, 2])
def test_greedy_layerskip_equals_greedy_decoding(target, exits, exit_layer, gamma, schedule):
    x = prompt()
    out, s = layerskip_generate(target, exits, exit_layer, x, 30, gamma, greedy=True, schedule=schedule)
    assert torch.equal(out, generate(target, x, 30, greedy=True))
    assert s.new_tokens == 30 == sum(s.accepted) + s.steps and s.target_calls == s.steps
    assert s.draft_calls == sum(s.drafted) and all(0 <= a <= d for a, d in zip(s.accepted, s.drafted))
    if schedule == "fixed":
        assert s.asked == [min(gamma, 30 - 1 - sum(s.accepted[:i]) - i) for i in range(s.steps)]


def test_one_token_prompt_and_nothing_to_generate(target, exits):
    x = torch.tensor([3])
    out, s = layerskip_generate(target, exits, 2, x, 12, 3, greedy=True)
    assert torch.equal(out, generate(target, x, 12, greedy=True))
    out, s = layerskip_generate(target, exits, 2, x[None], 0, 3)
    assert torch.equal(out, x[None]) and s.steps == 0


@pytest.fixture(scope="module")
def shakespeare():
    checkpoint = arlib.load("shakespeare-target")
    heads = arlib.load("shakespeare-heads").model
    return checkpoint.model.eval(), heads.exits.eval(), checkpoint.tokenizer


@pytest.mark.parametrize("exit_layer", [2, 3])
def test_greedy_layerskip_on_the_real_target(shakespeare, exit_layer):
    target, exits, tokenizer = shakespeare
    x = tokenizer.encode("ROMEO:\nBut soft, what light through yonder window breaks?\n")
    out, s = layerskip_generate(target, exits, exit_layer, x, 48, 4, greedy=True)
    assert torch.equal(out, generate(target, x, 48, greedy=True))
    assert s.tokens_per_call > 1  # the trained exits get drafts accepted


def _record_passes(model):
    """Hooks: every id tensor the token embedding reads, and every verification's final states (after ln_f),
    with the number of embedding reads before it. Returns (ids, finals, handles)."""
    ids, finals = [], []
    handles = [model.wte.register_forward_hook(lambda m, args, out: ids.append(args[0].clone())),
               model.ln_f.register_forward_hook(lambda m, args, out: finals.append((len(ids), out.clone())))]
    return ids, finals, handles


@pytest.mark.parametrize("greedy", [True, False])
def test_verification_logits_equal_a_full_forward(greedy):
    """Sharing the cache changes nothing numerically: at every step, the logits the verification computes from
    the draft's keys, values and layer-E states equal a plain forward of the whole sequence at those positions."""
    model, x = tiny(3), prompt(seed=7)
    exits = noisy_exits(model, seed=4)
    ids, finals, handles = _record_passes(model)
    out, s = layerskip_generate(model, exits, 2, x, 25, 4, greedy=greedy, generator=gen(2))
    for handle in handles:
        handle.remove()
    assert len(finals) == s.steps
    n, mark = len(x), 1  # the prefill read the embeddings once
    for step, (reads, h) in enumerate(finals):
        scored = torch.cat(ids[mark:reads], dim=1)  # (1, g + 1): the last decided token and the drafts
        mark = reads
        g = s.drafted[step]
        assert scored.shape == (1, g + 1) and h.shape == (1, g + 1, 16)
        assert torch.equal(scored[0, 0], out[n - 1])
        with torch.no_grad():
            full = model(torch.cat([out[None, :n - 1], scored], dim=1))[:, n - 1:]  # (1, g + 1, V)
        torch.testing.assert_close(F.linear(h, model.wte.weight), full, rtol=1e-5, atol=1e-5)
        n += s.accepted[step] + 1
    assert n == len(out)


def _count_positions(monkeypatch, model) -> list[int]:
    """Wrap every block: counts[l] is the number of positions block l has processed."""
    counts = [0] * model.config.n_layer
    for layer, block in enumerate(model.h):
        def counted(x, *args, _forward=block.forward, _layer=layer):
            counts[_layer] += x.shape[1]
            return _forward(x, *args)
        monkeypatch.setattr(block, "forward", counted)
    return counts


@pytest.mark.parametrize("greedy", [True, False])
def test_no_early_layer_is_recomputed(monkeypatch, target, exits, greedy):
    """Every position goes through every block exactly once: the prompt's T - 1 and, per step, the g + 1
    positions scored (the last decided token, the g drafts). The early blocks see no more positions than
    the late ones, and a step's early-block positions are the g draft steps plus the last draft's one."""
    counts = _count_positions(monkeypatch, target)
    x, E = prompt(), 2
    out, s = layerskip_generate(target, exits, E, x, 30, 4, greedy=greedy, generator=gen(0))
    expected = len(x) - 1 + sum(g + 1 for g in s.drafted)
    assert counts == [expected] * target.config.n_layer
    # the early-exit drafter with its own cache reruns the early blocks over the drafts in the target's pass
    counts[:] = [0] * target.config.n_layer
    _, s2 = speculative_generate(target, ModelDrafter(EarlyExitModel(target, E, exits)), x, 30, 4, greedy=greedy,
                                 generator=gen(0))
    assert counts[0] > counts[-1] == len(x) - 1 + sum(g + 1 for g in s2.drafted)


def _law(target, x, options, new):
    """The exact law (V^new,) of the next ``new`` tokens after x under the target's processed distribution."""
    V = target.config.vocab_size
    conts = torch.tensor(list(itertools.product(range(V), repeat=new)))  # (V^new, new)
    seqs = torch.cat([x.expand(len(conts), -1), conts], dim=1)
    with torch.no_grad():
        probs = options.probs(target(seqs[:, :-1]))[:, len(x) - 1:]  # (V^new, new, V)
    return probs.gather(-1, conts[..., None]).squeeze(-1).prod(-1).double()  # chain rule


def _chisquare(sample, law, N) -> float:
    """p-value of N sampled sequences (their indices) against the enumerated law, rare cells merged."""
    counts = torch.bincount(torch.tensor(sample), minlength=len(law)).double()
    assert counts[law == 0].sum() == 0, "drew a sequence the target never emits"
    big, rare = law * N >= 5, (law * N < 5) & (law > 0)
    obs = torch.cat([counts[big], counts[rare].sum()[None]])
    exp = torch.cat([law[big], law[rare].sum()[None]]) * N
    keep = exp > 0
    return stats.chisquare(obs[keep].numpy(), (exp[keep] / exp[keep].sum() * N).numpy()).pvalue


def _sample(run, new, V, N, seed) -> list[int]:
    g, radix = gen(seed), V ** torch.arange(new - 1, -1, -1)
    return [int((run(g)[-new:] * radix).sum()) for _ in range(N)]


_verify_one = speculative._verify_one  # the real one, before any test patches it


def _broken_verify_one(p, q, x, generator):
    """Wrong: accepts as it should, but on a rejection draws from p instead of the residual norm(max(0, p - q))."""
    k, y = _verify_one(p, q, x, generator)
    if k < x.shape[0]:
        y = sample_probs(p[k][None], generator)
    return k, y


@pytest.fixture(scope="module")
def small():
    """A tiny target over V = 4 tokens whose exit heads disagree with it (beta well below 1)."""
    model = tiny(8, n_layer=3, vocab_size=4, std=0.4)
    return model, noisy_exits(model, seed=9, scale=0.6)


OPTIONS = {"temperature": 0.8, "top_k": 3}


@pytest.mark.parametrize("schedule", ["fixed", "heuristic"])
def test_layerskip_sampling_law_is_the_targets(small, schedule):
    """Chi-square of whole 3-token continuations against the target's law, enumerated with the chain rule."""
    model, exits = small
    x, new, N = torch.tensor([1, 2, 1]), 3, 1000
    law = _law(model, x, SamplingOptions(**OPTIONS), new)
    sample = _sample(lambda g: layerskip_generate(model, exits, 1, x, new, 2, generator=g, stats=False,
                                                  schedule=schedule, **OPTIONS), new, 4, N, seed=11)
    assert _chisquare(sample, law, N) > 1e-3


def test_a_broken_verifier_fails_the_same_law_test(small, monkeypatch):
    """The same test catches a verifier that resamples from p, not the residual, after a rejection."""
    model, exits = small
    x, new, N = torch.tensor([1, 2, 1]), 3, 1000
    law = _law(model, x, SamplingOptions(**OPTIONS), new)
    _, s = layerskip_generate(model, exits, 1, x, 40 - len(x), 2, generator=gen(0), **OPTIONS)
    assert s.acceptance_rate < 0.8  # rejections happen, so the broken rule matters
    monkeypatch.setattr(speculative, "_verify_one", _broken_verify_one)
    sample = _sample(lambda g: layerskip_generate(model, exits, 1, x, new, 2, generator=g, stats=False, **OPTIONS),
                     new, 4, N, seed=11)
    assert _chisquare(sample, law, N) < 1e-6


# --- dynamic draft length: the heuristic schedule and the confidence stop ---------------------------


class Scripted(Drafter):
    """Proposes the target's greedy continuation ``reference`` (1, total), except at the steps in ``wrong``
    (step -> index): there the draft at that index is changed, so greedy verification accepts exactly index
    drafts. Records the gamma it is asked for."""

    def __init__(self, reference, wrong, V):
        self.reference, self.wrong, self.V = reference, wrong, V
        self.asked, self.step = [], 0

    def propose(self, seq, gamma, options=PLAIN, generator=None):
        L = seq.shape[1]
        tokens = self.reference[:, L:L + gamma].clone()
        j = self.wrong.get(self.step)
        if j is not None and j < gamma:
            tokens[0, j] = (tokens[0, j] + 1) % self.V
        self.asked.append(gamma)
        self.step += 1
        return Draft(tokens, None, 0)


def test_heuristic_schedule_trajectory(target):
    """All accepted: +2; a rejection: -1, never below 1 (Hugging Face's num_assistant_tokens_schedule="heuristic")."""
    x = prompt()
    reference = generate(target, x, 40, greedy=True)[None]  # (1, 46)
    wrong = {2: 0, 3: 1, 4: 0, 5: 0, 6: 0, 7: 0}  # steps 0, 1 and 8 on: everything accepted
    drafter = Scripted(reference, wrong, 11)
    out, s = speculative_generate(target, drafter, x, 40, 2, greedy=True, schedule="heuristic")
    assert torch.equal(out, reference[0])
    assert s.asked[:10] == [2, 4, 6, 5, 4, 3, 2, 1, 1, 3]
    assert s.asked == drafter.asked and s.accepted[:9] == [2, 4, 0, 1, 0, 0, 0, 0, 1]
    drafter = Scripted(reference, wrong, 11)  # the fixed schedule ignores the outcomes
    _, s = speculative_generate(target, drafter, x, 40, 2, greedy=True)
    assert s.asked == [min(2, 40 - 1 - sum(s.accepted[:i]) - i) for i in range(s.steps)]


@pytest.mark.parametrize("drafter", ["draft", "ngram", "stop"])
def test_greedy_with_the_heuristic_schedule_equals_greedy_decoding(target, drafter):
    draft = tiny(1, n_layer=1)
    drafter = {"draft": ModelDrafter(draft), "ngram": NGramDrafter(),
               "stop": ModelDrafter(draft, confidence_stop=0.4)}[drafter]
    x = prompt()
    for gamma in (1, 4):
        out, s = speculative_generate(target, drafter, x, 40, gamma, greedy=True, schedule="heuristic")
        assert torch.equal(out, generate(target, x, 40, greedy=True))
        assert s.asked[0] == gamma and min(s.asked[:-1]) >= 1


def test_confidence_stop_proposes_fewer_tokens_when_unsure():
    draft, seq = tiny(1, n_layer=1, std=0.3), prompt()[None]
    greedy = SamplingOptions(greedy=True)
    full = ModelDrafter(draft).propose(seq, 6, greedy)
    with torch.no_grad():
        logits = draft(torch.cat([seq, full.tokens[:, :-1]], dim=1))[0, seq.shape[1] - 1:]  # (6, V)
    top = logits.softmax(-1).max(-1).values  # (6,): the draft's top probabilities
    for threshold in (0.0, float(top.min()) + 1e-6, float(top.max()) + 1e-6, 1.0):
        d = ModelDrafter(draft, confidence_stop=threshold).propose(seq, 6, greedy)
        below = (top[:-1] < threshold).nonzero()
        g = 6 if len(below) == 0 else int(below[0]) + 1  # the first unsure draft is still proposed
        assert d.tokens.shape[1] == d.calls == g and torch.equal(d.tokens, full.tokens[:, :g])
    # sampled: every draft but the last had q(x) >= the threshold, and a shorter proposal ended on q(x) below it
    d = ModelDrafter(draft, confidence_stop=0.5)
    for seed in range(20):
        p = d.propose(seq, 5, SamplingOptions(), gen(seed))
        qx = p.probs[0].gather(-1, p.tokens[0, :, None])[:, 0]  # (g,)
        assert bool((qx[:-1] >= 0.5).all()) and (p.tokens.shape[1] == 5 or qx[-1] < 0.5)
        d.accept(0)
    _, s_stop = speculative_generate(tiny(), ModelDrafter(draft, confidence_stop=0.9), prompt(), 40, 6, greedy=True)
    _, s_all = speculative_generate(tiny(), ModelDrafter(draft), prompt(), 40, 6, greedy=True)
    assert sum(s_stop.drafted) / s_stop.steps < sum(s_all.drafted) / s_all.steps and s_stop.asked[0] == 6


@pytest.mark.parametrize("schedule", ["fixed", "heuristic"])
def test_confidence_stop_and_schedule_keep_the_law(small, schedule):
    model, _ = small
    draft = tiny(12, n_layer=1, vocab_size=4, std=0.4)
    x, new, N = torch.tensor([1, 2, 1]), 3, 1000
    law = _law(model, x, SamplingOptions(**OPTIONS), new)
    drafter = ModelDrafter(draft, confidence_stop=0.5)
    sample = _sample(lambda g: speculative_generate(model, drafter, x, new, 2, generator=g, stats=False,
                                                    schedule=schedule, **OPTIONS), new, 4, N, seed=13)
    assert _chisquare(sample, law, N) > 1e-3
