"""Simulated tool world, task suite and teacher agent fleet."""
