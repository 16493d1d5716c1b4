"""Tests against a real `dataproduct serve` process over loopback HTTP."""
