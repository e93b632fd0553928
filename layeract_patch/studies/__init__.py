"""Experiments from the paper that are more than training a model: the library side of their recipes."""
