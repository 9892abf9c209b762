"""Phonehome: a network sensor that shows which LAN device phones home to which cloud."""

__version__ = "0.2.0"
