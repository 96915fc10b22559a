"""Sweeps, reports and the commands that run them."""
