"""Train a hand-written ResNet to tell cats from dogs on Oxford-IIIT Pet, the production way."""

__version__ = "0.1.0"
