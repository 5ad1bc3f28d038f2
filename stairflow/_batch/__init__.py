"""Batches: one graph over many prompts, resumable, on one process or a Ray cluster.

`prompts` reads and checks the input, `results` owns the results file (whole lines, no
duplicates, resumable), `runner` runs the prompts concurrently in one Trio loop, and
`cluster` spreads them over Ray workers, each running a `runner` loop of its own.
"""
