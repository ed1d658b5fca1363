"""EAGLE (arlib.decoding.eagle): the head reads the frozen target, its trees are well formed and computed as a
plain sequence would be, training lowers its loss, and tree decoding with it keeps the target's greedy output."""

import pytest
import torch
from tiny_models import tiny_gpt

import arlib
from arlib.decoding.drafters import SamplingOptions
from arlib.decoding.eagle import EagleDrafter, EagleHead, eagle_acceptance, eagle_losses
from arlib.decoding.tree_decoding import tree_generate
from arlib.text.sampling import generate

V = 13
GREEDY = SamplingOptions(greedy=True)  # top-ranked guesses (sampling draws the children from q)
TREE = [(0,), (1,), (2,), (0, 0), (0, 1), (1, 0), (0, 0, 0), (0, 1, 0), (0, 0, 0, 0)]


def head_on(seed: int = 0, n_layer: int = 2):
    target = tiny_gpt(seed, n_layer=n_layer, vocab_size=V)
    head = EagleHead(target)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # large random weights: confident, varied guesses
        for p in head.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)
    return target, head.eval()


def drafters(head):
    return {"chain": EagleDrafter(head, depth=4), "static": EagleDrafter(head, TREE),
            "dynamic": EagleDrafter(head, dynamic=True, depth=4, top_k=3, n_nodes=12)}


def test_head_shapes_and_the_target_is_read_not_copied():
    target, head = head_on()
    f, x = torch.randn(2, 7, 16), torch.randint(0, V, (2, 7))
    assert head(f, x).shape == (2, 7, 16) and head.logits(f).shape == (2, 7, V)
    assert not any(k.startswith(("wte", "wpe", "ln_f", "_target")) for k in head.state_dict())
    d = 16
    assert sum(p.numel() for p in head.parameters()) == (2 * d * d + d) + sum(
        p.numel() for p in head.block.parameters())
    assert isinstance(head.block.ln_1, torch.nn.Identity)  # EAGLE's first layer has no input norm
    # the LM head is the target's: features of the target give the target's logits
    idx = torch.randint(0, V, (1, 9))
    logits, hidden = target(idx, return_hidden=True)
    assert torch.allclose(head.logits(hidden[-1]), logits, atol=1e-5)
    loose = EagleHead(target.config)
    with pytest.raises(ValueError, match="target"):
        loose.logits(f)
    assert loose.attach(target).target is target


def test_cached_pairs_match_the_uncached_head():
    _, head = head_on()
    f, x = torch.randn(1, 10, 16), torch.randint(0, V, (1, 10))
    full = head(f, x)
    cache = head.new_cache(1)
    parts = [head(f[:, :4], x[:, :4], cache=cache), head(f[:, 4:5], x[:, 4:5], cache=cache),
             head(f[:, 5:], x[:, 5:], cache=cache)]
    assert cache.length == 10 and torch.allclose(torch.cat(parts, 1), full, atol=1e-5)


def well_formed(tree, root):
    tokens, parents, depths = tree.tokens.tolist(), tree.parents.tolist(), tree.depths.tolist()
    assert tokens[0] == root and parents[0] == -1 and depths[0] == 0
    assert all(0 <= a < i and depths[i] == depths[a] + 1 for i, a in enumerate(parents) if i)
    for u in range(len(tokens)):
        kids = [tokens[c] for c, a in enumerate(parents) if a == u]
        assert len(set(kids)) == len(kids)
    assert all(0 <= t < V for t in tokens)


@pytest.mark.parametrize("kind", ["chain", "static", "dynamic"])
def test_trees_are_well_formed_and_the_cache_returns_to_the_decided_prefix(kind):
    target, head = head_on()
    drafter = drafters(head)[kind]
    seq = torch.randint(0, V, (1, 12))
    assert len(drafter.propose_tree(seq).tree) == 1  # nothing observed yet: the root alone
    _, hidden = target(seq[:, :-1], return_hidden=True)
    drafter.observe(hidden[-1], seq[:, 1:])
    for _ in range(2):
        draft = drafter.propose_tree(seq, GREEDY)
        well_formed(draft.tree, int(seq[0, -1]))
        assert drafter.cache.length == seq.shape[1] - 1 and draft.calls >= 1
    n = len(draft.tree) - 1
    assert n == {"chain": 4, "static": len(TREE), "dynamic": 12}[kind]
    with pytest.raises(ValueError, match="seq"):
        drafter.propose_tree(seq[:, :-2])  # not the sequence it observed


def test_the_chain_is_the_heads_own_greedy_sequence():
    """The chain drafted with tree attention in the cache equals running the head on the whole sequence of
    pairs, true ones then its own (predicted feature, guessed token), without a cache."""
    target, head = head_on(3)
    seq = torch.randint(0, V, (1, 9))
    _, hidden = target(seq[:, :-1], return_hidden=True)
    drafter = EagleDrafter(head, depth=4)
    drafter.observe(hidden[-1], seq[:, 1:])
    chain = drafter.propose_tree(seq, GREEDY).tree.tokens[1:].tolist()
    feats, toks, guesses = hidden[-1], seq[:, 1:], []
    for _ in range(4):
        pred = head(feats, toks)[:, -1:]  # (1, 1, d)
        guess = head.logits(pred).argmax(-1)  # (1, 1)
        guesses.append(int(guess))
        feats, toks = torch.cat([feats, pred], 1), torch.cat([toks, guess], 1)
    assert chain == guesses


def test_dynamic_tree_keeps_the_best_values_and_the_expansion_counts():
    """EAGLE-2: with room for every candidate the tree holds top_k at depth 1 and top_k**2 per further depth;
    with less, a node's value (product of the drafter's probabilities on its path) is never below a child's."""
    target, head = head_on(5)
    seq = torch.randint(0, V, (1, 10))
    _, hidden = target(seq[:, :-1], return_hidden=True)
    all_ = EagleDrafter(head, dynamic=True, depth=3, top_k=3, n_nodes=100)
    all_.observe(hidden[-1], seq[:, 1:])
    tree = all_.propose_tree(seq).tree
    assert torch.bincount(tree.depths).tolist() == [1, 3, 9, 9]
    some = EagleDrafter(head, dynamic=True, depth=3, top_k=3, n_nodes=6)
    some.observe(hidden[-1], seq[:, 1:])
    small = some.propose_tree(seq).tree
    well_formed(small, int(seq[0, -1]))
    assert len(small) == 7


def test_acceptance_depth_two_reads_the_heads_own_feature():
    target, head = head_on(2)
    x = torch.randint(0, V, (1, 12))
    acc = eagle_acceptance(head, x, depth=2, ranks=3)
    assert len(acc["top1"]) == 2 and len(acc["rank_accuracy"][1]) == 3
    logits, hidden = target(x, return_hidden=True)
    f = hidden[-1]
    hits = []
    for j in range(12 - 1 - 2):  # root j: pairs <= j true, then (f^_(j+1), x_(j+2))
        pred1 = head(f[:, :j + 1], x[:, 1:j + 2])[:, -1:]
        pred2 = head(torch.cat([f[:, :j + 1], pred1], 1), x[:, 1:j + 3])[:, -1]
        hits.append(int(head.logits(pred2).argmax()) == int(logits[0, j + 2].argmax()))
    assert acc["top1"][1] == pytest.approx(sum(hits) / len(hits))
    assert acc["rank_accuracy"][0][0] == pytest.approx(acc["top1"][0])


def test_teacher_forced_training_lowers_the_loss():
    torch.manual_seed(0)
    target = tiny_gpt(1, vocab_size=V)
    for p in target.parameters():
        p.requires_grad_(False)
    head = EagleHead(target)
    x = torch.randint(0, V, (8, 24), generator=torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    first = eagle_losses(head, x, noise=0.0)
    for _ in range(30):
        loss = eagle_losses(head, x, generator=torch.Generator().manual_seed(1))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    last = eagle_losses(head, x, noise=0.0)
    assert last["loss"] < 0.7 * first["loss"] and last["cls"] < first["cls"]
    assert first["loss"].item() == pytest.approx((first["reg"] + 0.1 * first["cls"]).item())
    assert target.wte.weight.grad is None  # the target stays frozen


@pytest.mark.parametrize("kind", ["chain", "static", "dynamic"])
def test_tree_generate_with_eagle_keeps_the_greedy_output(kind):
    target, head = head_on(4)
    prompt = torch.randint(0, V, (8,), generator=torch.Generator().manual_seed(4))
    out, stats = tree_generate(target, drafters(head)[kind], prompt, 40, greedy=True)
    assert torch.equal(out, generate(target, prompt[None], 40, greedy=True)[0])
    assert sum(stats.accepted) + stats.target_calls == 40
    # sampling runs too (its law is tree_generate's to prove) and the drafter ends at the decided prefix
    drafter = drafters(head)[kind]
    out = tree_generate(target, drafter, prompt, 40, generator=torch.Generator().manual_seed(0), stats=False)
    assert out.shape == (48,) and drafter.cache.length == 47


@pytest.mark.parametrize("kind", ["chain", "static", "dynamic"])
def test_trees_fit_at_the_end_of_the_context(kind):
    """Up to the last position of the context (64 here): the trees get shallower, the cache keeps room for
    the tree's nodes beyond the decided pairs."""
    target, head = head_on(4)
    prompt = torch.randint(0, V, (50,), generator=torch.Generator().manual_seed(5))
    out = tree_generate(target, drafters(head)[kind], prompt, 14, greedy=True, stats=False)
    assert torch.equal(out, generate(target, prompt[None], 14, greedy=True)[0])


def test_a_trained_head_is_accepted_more_than_a_random_one():
    """Distilled on the tiny target's own greedy text, the head's chain is accepted more often."""
    torch.manual_seed(0)
    target = tiny_gpt(6, vocab_size=V)
    for p in target.parameters():
        p.requires_grad_(False)
    text = generate(target, torch.randint(0, V, (16, 4), generator=torch.Generator().manual_seed(1)), 36,
                    generator=torch.Generator().manual_seed(2), temperature=0.5)  # (16, 40)
    head = EagleHead(target)
    prompt = text[0, :8]
    before = tree_generate(target, EagleDrafter(head, depth=3), prompt, 30, greedy=True)[1]
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    for _ in range(150):
        loss = eagle_losses(head, text)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = tree_generate(target, EagleDrafter(head.eval(), depth=3), prompt, 30, greedy=True)[1]
    assert after.target_calls < before.target_calls


@pytest.mark.slow
def test_eagle_recipe_runs_and_its_checkpoint_loads(tmp_path):
    """`python -m arlib.recipes shakespeare-eagle`, shortened: features of the committed target, two steps,
    per-depth agreement in the sidecar, and the head loads back attached to the target."""
    from arlib.data import DataUnavailableError, shakespeare
    from arlib.decoding.recipes import load_eagle_head, run_eagle_recipe

    try:
        shakespeare()
    except DataUnavailableError as exc:  # pragma: no cover
        pytest.skip(str(exc))
    meta = run_eagle_recipe("shakespeare-eagle", steps=2, out=str(tmp_path), progress=False, eval_chars=1024)
    assert meta["command"] == "python -m arlib.recipes shakespeare-eagle --steps 2" and meta["train"]["steps"] == 2
    assert len(meta["metrics"]["teacher_forced"]["top1"]) == 5 and meta["kind"] == "eagle_head"
    assert meta["stored_dtype"] == "float16" and meta["data"]["train_windows"] == 64
    target = arlib.load("shakespeare-target").model
    head = load_eagle_head(target, "shakespeare-eagle", directory=str(tmp_path))
    assert head.target is target and not head.training
    assert (tmp_path / "shakespeare-eagle.safetensors").stat().st_size < 3 * 2**20


def test_committed_eagle_head_matches_its_recipe_and_is_accepted():
    """data/checkpoints/shakespeare-eagle: the full recipe, under 3 MB, agreement recorded per depth (falling
    with depth as the head reads its own features), a valid static tree, and, on held-out text, more than
    two tokens per target pass with a chain of 4 (greedy: the target's own tokens)."""
    from arlib.checkpoints import CHECKPOINT_DIR, load_meta
    from arlib.data import shakespeare
    from arlib.decoding.recipes import EAGLE_RECIPES, load_eagle_head
    from arlib.decoding.tree_decoding import sparse_tree

    meta, recipe = load_meta("shakespeare-eagle"), EAGLE_RECIPES["shakespeare-eagle"]
    assert meta["command"] == "python -m arlib.recipes shakespeare-eagle"
    assert meta["train"]["steps"] == recipe["train"].steps and meta["data"]["train_windows"] == recipe["windows"]
    assert (CHECKPOINT_DIR / "shakespeare-eagle.safetensors").stat().st_size < 3 * 2**20
    top1 = meta["metrics"]["teacher_forced"]["top1"]
    assert len(top1) == recipe["eval_depth"] and top1[0] > 0.6 and top1[0] > top1[-1]
    assert len(sparse_tree(meta["metrics"]["static_choices_20"])) == 21
    loaded = arlib.load("shakespeare-target")
    head = load_eagle_head(loaded.model)
    assert meta["parameters"] == sum(p.numel() for p in head.parameters())
    prompt = loaded.tokenizer.encode(shakespeare().val[1000:1064])
    out, stats = tree_generate(loaded.model, EagleDrafter(head, depth=4), prompt, 64, greedy=True)
    assert torch.equal(out, generate(loaded.model, prompt[None], 64, greedy=True)[0])
    assert 64 / stats.target_calls > 2.0


@pytest.mark.parametrize("kind", ["static", "dynamic"])
def test_sampled_eagle_trees_follow_the_target(kind):
    """At temperature 1 a static tree's children are drawn from q without replacement and returned with q;
    the dynamic tree stays deterministic. Either way the output has the target's law (chi-square, V = 4)."""
    import itertools

    from scipy import stats

    target = tiny_gpt(5, vocab_size=4, std=0.3)
    head = EagleHead(target)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)
    head.eval()
    drafter = (EagleDrafter(head, [(0,), (1,), (0, 0), (1, 0)], top_k=2) if kind == "static"
               else EagleDrafter(head, dynamic=True, depth=2, top_k=2, n_nodes=4))
    prompt = torch.tensor([1, 3, 0])
    seqs = list(itertools.product(range(4), repeat=3))
    with torch.no_grad():
        x = torch.cat([prompt.expand(len(seqs), -1), torch.tensor(seqs)], 1)
        logp = target(x).log_softmax(-1)[:, 2:-1].gather(-1, torch.tensor(seqs)[..., None])[..., 0].sum(-1)
    law = logp.exp().double()
    counts = torch.zeros(64, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    for _ in range(2000):
        out = tree_generate(target, drafter, prompt, 3, generator=gen, stats=False)[3:].tolist()
        counts[out[0] * 16 + out[1] * 4 + out[2]] += 1
    assert stats.chisquare(counts.numpy(), (2000 * law / law.sum()).numpy()).pvalue > 1e-3
    drafter.reset()
    with torch.no_grad():
        drafter.observe(target(prompt[None, :-1], return_hidden=True)[1][-1], prompt[None, 1:])
    draft = drafter.propose_tree(prompt[None], generator=gen)
    assert (draft.probs is not None) == (kind == "static")
