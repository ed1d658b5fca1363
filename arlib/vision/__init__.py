"""Images (chapter 4): VQ and multi-scale tokenizers, raster and next-scale generators, speculative Jacobi
decoding and LANTERN, the Fashion-MNIST classifier and Fréchet distance, and their recipes."""
