"""trojanbench: test interpretability and auditing tools against models whose trojans we planted."""

__version__ = "0.1.0"
