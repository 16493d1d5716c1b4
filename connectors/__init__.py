"""Built-in connectors, registered through the `dataproduct.connectors` entry points."""
