"""Loaders for the checkpoint layouts users have on disk (MODEL.md §7)."""
