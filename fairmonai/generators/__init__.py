"""Generative models: conditioning, networks and sampling for synthetic data (one module per algorithm)."""
