"""Downloading tasks: origin backend, scheduler client, piece collector, parent selector, Vortex client."""
