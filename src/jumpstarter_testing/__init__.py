"""pytest plugin and helpers for testing hardware in the loop with jumpstarter_drivers."""
