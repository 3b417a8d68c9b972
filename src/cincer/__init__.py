"""CINCER: interactive label cleaning with example-based explanations."""

__version__ = "0.1.0"
