"""Data: record schema, real-format loaders, grain mixtures, built-in tasks."""
