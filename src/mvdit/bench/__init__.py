"""Benchmarks: each a command that writes JSON and a markdown table, with ratios measured side by
side in one run and the machine's load recorded (`mvdit bench`, `bench-vae`, `bench-tiling`)."""
