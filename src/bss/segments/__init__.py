"""Segments and per-member batch segment configs."""
