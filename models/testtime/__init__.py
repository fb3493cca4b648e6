"""Test-time tuning (TPT, DiffTPT): views of each test image, their selection, and the per-image tuning loop."""
