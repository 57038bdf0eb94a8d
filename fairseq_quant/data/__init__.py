"""Data and conversion: GLUE preparation and metrics, the embedded default task, offline conversion of Hugging Face
encoders (and the pip-shipped MiniLM)."""
