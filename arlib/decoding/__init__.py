"""Decoding faster (chapters 2-3): speculative decoding, drafters, draft heads (early exit, Medusa,
Hydra), SpecTr's optimal-transport verification, and the draft heads' recipe. Builds on :mod:`arlib.text`."""
