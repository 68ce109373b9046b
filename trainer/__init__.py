"""Trainer: retrain consumer, student SFT/DPO, evaluation gate, model registry."""
