"""Speech (chapter 5): audio features, CTC, the speech encoder and attention decoder, Paraformer's CIF,
word and character error rates, and the speech recipes."""
