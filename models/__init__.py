"""PyTorch definitions of the ACE-Step v1.5 models, checkpoint loading and the reference pipeline."""
