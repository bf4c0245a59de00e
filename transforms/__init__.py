"""Beam transforms and the pure functions they call: reading, decoding, feature extraction,
divergence and Parquet output for the InceptionV3 parity pipeline."""
