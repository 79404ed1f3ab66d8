"""The reusable pieces of the paper's second step, written once for every DiT: `slicing` (a
UnitMask -> a physically smaller DiT that computes exactly what the masked one computes),
`importance` (KD sensitivity and the cheap criteria, the calibration set), `prune` (the budgeted
greedy search) and `diffusers_dit` (the adapter that lets a diffusers Wan or LTX-Video transformer
enter the same search and slicing).
"""
