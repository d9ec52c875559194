"""lmdistill: distil large language models into small ones, and measure what the student kept."""

__version__ = "0.1.0"
