"""Images to tensors: the image reader, the decode-once cache, datasets, transforms and a run's evaluation input."""
