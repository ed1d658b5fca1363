"""Serving AR models (chapter 7): the KV cache under pressure. How much memory the cache takes
(:mod:`~arlib.serving.memory`), paging it in blocks (:mod:`~arlib.serving.paged`) and serving requests with it
(:mod:`~arlib.serving.scheduler`), evicting positions
(:mod:`~arlib.serving.eviction`), quantizing it (:mod:`~arlib.serving.quant`) and GEAR's error-corrected
compression (:mod:`~arlib.serving.gear`), each a cache the book's GPT reads through
:meth:`arlib.text.gpt.KVCache.attend`; :mod:`~arlib.serving.evaluate` measures what each costs in quality.
Builds on :mod:`arlib.text` and :mod:`arlib.decoding`."""
