"""Shipped hardware target descriptors (TOML data files), installed as blockprune._targets."""
