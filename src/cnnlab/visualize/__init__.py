"""Seeing inside a network: figures, feature maps, Grad-CAM and the NumPy convolution walk-through."""
