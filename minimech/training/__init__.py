"""Training minimech's own small models: corpus generators, the training loop and the phenomenon metrics."""
