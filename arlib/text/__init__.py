"""Text models (chapters 0-1): the GPT and its KV cache, the character tokenizer, n-gram counting models,
sampling, language-model data and metrics, Hugging Face export, and the Shakespeare recipes."""
