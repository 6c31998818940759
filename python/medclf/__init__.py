"""medclf: reproducible study toolkit for medical image classification."""

__version__ = "0.1.0"
