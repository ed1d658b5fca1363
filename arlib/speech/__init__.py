"""Speech (chapter 5): audio features, CTC, the speech encoder and the hybrid CTC/attention model, decoding
CTC and attention together (lexicon search, attention rescoring, joint beam search), Paraformer's CIF,
CASS-NAT, test conditions (noise, reverberation, speed), word and character error rates, and the speech
recipes."""
