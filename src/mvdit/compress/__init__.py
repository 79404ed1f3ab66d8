"""The reusable pieces of the paper's second and third steps, written once for every DiT.

Here today: `slicing` (a UnitMask -> a physically smaller DiT that computes exactly what the
masked one computes). Coming with the pruning and distillation stages: importance scores
(KD sensitivity and the cheap criteria), KD losses, the DiT discriminator, and adapters that
let a diffusers video transformer enter the same recipe.
"""
