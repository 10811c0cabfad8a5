"""Procedurally generated test images (placeholder)."""
