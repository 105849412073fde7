"""tunelab: from raw task data to a fine-tuned, evaluated model."""

__version__ = "0.1.0"
