"""Benchmarks of sandboxd against the floor (bare node) and a peer jail (bubblewrap), measured
in one run on one machine, reported as ratios. See benchmarks/README.md.

    python -m benchmarks            # quick mode, < 5 minutes on 2 cores
    python -m benchmarks --full     # more samples, 64 MiB payloads
    python -m benchmarks compare    # the newest run's ratios against benchmarks/reference.json
"""
