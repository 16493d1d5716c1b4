"""The marketplace core: publications, store, search and exports (no HTTP here)."""
