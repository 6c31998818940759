"""Heat maps with their sanity checks, and attention-guided cropping."""
