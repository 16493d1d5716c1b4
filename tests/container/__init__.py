"""The Docker image, built and run for real (`pytest -m container`)."""
