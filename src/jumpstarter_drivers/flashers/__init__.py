"""Flashing boards through U-Boot: bundles, the BaseFlasher driver and its client."""
