"""Automatic checks for the book's exercises (the classroom format of the book's page "For instructors").

Each check takes the learner's function, tries it on several inputs including edge cases, and either
prints one line saying it passed or raises :class:`CheckFailed` saying what was tested, what was
expected, what came, and a hint that does not give the solution away. A stub that still raises
``NotImplementedError`` is reported as "not yet implemented".
"""

from arlib.checks.ch00 import class_means, frame_signal, mel_scale, unigram_entropy
from arlib.checks.ch01 import (
    cached_attention,
    continuation_log_prob,
    kl_divergence,
    kneser_ney_bigram,
    perplexity,
    top_p_filter,
)
from arlib.checks.ch02 import (
    accept_prefix,
    expected_tokens_sum,
    optimal_gamma_search,
    prompt_lookup,
    residual_distribution,
)
from arlib.checks.ch03 import (
    kseq_residual_law,
    kseq_rho_search,
    maximal_coupling,
    rrs_acceptance_exact,
    two_draft_optimum,
)
from arlib.checks.ch04 import lantern_proximity, maskgit_plan, residual_quantize, sjd_verify, straight_through_quantize
from arlib.checks.ch05 import cif_fire, ctc_forward_recursion, ctc_greedy_collapse, mel_filterbank_matrix
from arlib.checks.ch06 import bias_adaptation, find_latent, mean_max_cosine, topk_latents
from arlib.checks.ch07 import low_rank_residual, quantize_per_channel, read_through_table, sink_window_mask
from arlib.checks.core import CheckFailed

__all__ = [
    "CheckFailed", "unigram_entropy", "class_means", "frame_signal", "mel_scale",
    "perplexity", "top_p_filter", "cached_attention", "continuation_log_prob", "kl_divergence", "kneser_ney_bigram",
    "expected_tokens_sum", "residual_distribution", "optimal_gamma_search", "prompt_lookup", "accept_prefix",
    "maximal_coupling", "kseq_rho_search", "kseq_residual_law", "rrs_acceptance_exact", "two_draft_optimum",
    "straight_through_quantize", "residual_quantize", "sjd_verify", "lantern_proximity", "maskgit_plan",
    "mel_filterbank_matrix", "ctc_forward_recursion", "ctc_greedy_collapse", "cif_fire",
    "topk_latents", "mean_max_cosine", "bias_adaptation", "find_latent",
    "read_through_table", "sink_window_mask", "quantize_per_channel", "low_rank_residual",
]
