"""Fleet benchmark of profile fan-out: refserver and Synapse against N simulated federation
servers (``python -m benchmarks``; results in docs/benchmarks.md)."""
