"""Sequence-to-sequence models sharing one interface (see ``base.py``): RNN and Transformer."""
