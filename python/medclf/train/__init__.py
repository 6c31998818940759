"""A training run: resolved configuration, recipes, early stopping, class balancing, learning-rate range test."""
