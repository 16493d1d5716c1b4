"""Tests of the marketplace core."""
