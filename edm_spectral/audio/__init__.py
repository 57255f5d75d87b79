"""The audio experiment of the paper: a mel-conditioned DiffWave vocoder (state-dict compatible
with the public LMNT release) fine-tuned with the 1-D spectral regularizers."""
