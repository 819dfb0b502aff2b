"""Measuring where training time goes: cnnlab's data path against the tutorial's plain loop."""
