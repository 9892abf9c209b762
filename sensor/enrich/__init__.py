"""Enrichers: add who/where facts to flows and devices."""
