"""Training: the Trainer loop, checkpoints, and the recipes that configure it."""
