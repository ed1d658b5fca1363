"""Inside the model (chapter 6): superposition toy models, sparse autoencoders (L1, TopK, bias adaptation),
their training, and the SAE recipe on the book's GPT."""
