"""Weights on disk: reading, checking and writing checkpoints (`checkpoints`), and fetching the released
ones into the cache (`fetch`)."""
