"""The recipe's stages, one file each with its config section and its entry point: the teacher
(`teacher`), the VAE (`vae`), sensitivity and pruning (`prune`), KD recovery (`kd`), teacher
samples and adversarial step distillation (`distill`)."""
