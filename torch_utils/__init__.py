"""Torch helpers shared by training, sampling and checkpoint code; also the names that released EDM pickles import."""
