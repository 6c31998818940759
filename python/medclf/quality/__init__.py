"""The image quality gate and the degradation study."""
