"""Token trees and tree attention (arlib.decoding.tree) and SpecTr verified as one tree."""

import torch
from tiny_models import tiny_gpt

from arlib.decoding.spectr import spectr_generate
from arlib.decoding.tree import build_tree, keep_path, tree_mask


def test_a_trie_shares_common_prefixes():
    drafts = torch.tensor([[5, 6, 7], [5, 6, 8], [5, 9, 7], [5, 6, 7]])
    tree = build_tree(3, drafts)
    assert tree.tokens.tolist() == [3, 5, 6, 7, 8, 9, 7]
    assert tree.parents.tolist() == [-1, 0, 1, 2, 2, 1, 5]
    assert tree.depths.tolist() == [0, 1, 2, 3, 3, 2, 3]
    assert tree.paths.tolist() == [[0, 1, 2, 3], [0, 1, 2, 4], [0, 1, 5, 6], [0, 1, 2, 3]]
    mask = tree_mask(tree, 2)
    assert mask.shape == (7, 9) and mask[:, :2].all()
    assert mask[4, 2:].tolist() == [True, True, True, False, True, False, False]  # root, 5, 6, itself


def test_tree_attention_gives_each_path_its_sequential_logits_and_cache():
    torch.manual_seed(0)
    model = tiny_gpt(3, vocab_size=17, block_size=64).eval()
    prefix = torch.randint(0, 17, (1, 9))
    drafts = torch.randint(0, 17, (4, 3))
    drafts[1, 0] = drafts[0, 0]  # a shared first token
    tree = build_tree(int(prefix[0, -1]), drafts)
    with torch.no_grad():
        cache = model.new_cache(1)
        model(prefix[:, :-1], cache=cache)
        start = cache.length
        logits = model(tree.tokens[None], cache=cache, tree=(start + tree.depths, tree_mask(tree, start)))[0]
        for r in range(4):
            sequence = torch.cat([prefix, drafts[r:r + 1]], 1)
            expected = model(sequence)[0, start:]  # (g + 1, V): after the root and each draft token
            assert torch.allclose(logits[tree.paths[r]], expected, atol=1e-5)
        keep_path(cache, start, tree.paths[2].tolist())  # keep row 2's whole path
        reference = model.new_cache(1)
        model(torch.cat([prefix, drafts[2:3]], 1), cache=reference)
        n = cache.length
        assert n == reference.length
        assert torch.allclose(cache.k[:, :, :, :n], reference.k[:, :, :, :n], atol=1e-5)
        assert torch.allclose(cache.v[:, :, :, :n], reference.v[:, :, :, :n], atol=1e-5)


def test_spectr_on_a_tree_decides_as_the_batched_rows_do():
    target = tiny_gpt(0, vocab_size=13, block_size=128)
    draft = tiny_gpt(1, n_layer=1, vocab_size=13, block_size=128)
    prompt = torch.tensor([1, 2, 3, 4])
    for seed in range(4):
        for k, gamma in [(1, 3), (2, 3), (4, 4), (3, 1)]:
            chain, chain_stats = spectr_generate(target, draft, prompt, 30, k, gamma,
                                                 generator=torch.Generator().manual_seed(seed))
            tree, tree_stats = spectr_generate(target, draft, prompt, 30, k, gamma, tree=True,
                                               generator=torch.Generator().manual_seed(seed))
            assert torch.equal(chain, tree), (seed, k, gamma)
            assert tree_stats.accepted == chain_stats.accepted
            assert all(t <= c for t, c in zip(tree_stats.scored, chain_stats.scored))  # sharing only saves
