"""What runs beside training: probes (per-batch statistics of what a loss published), the
recorder (their JSONL), the sentinel (cheap checks, snapshot, capsule, replay), the watch for
a user's own loop, and ``diagnose`` (runs, summary, check, report).

Nothing is imported here: each module is imported where it is used.
"""
