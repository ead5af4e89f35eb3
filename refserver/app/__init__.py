"""Process edge: configuration, wiring, the HTTP app, the root nursery and the CLI."""
