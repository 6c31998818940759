"""Architectures (torchvision and metadata fusion) and their layers."""
