"""The marketplace service's HTTP edge: the JSON API (and, later, the web pages)."""
