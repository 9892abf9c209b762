"""Helpers for tests that compare decoded hellos."""

from __future__ import annotations

import dataclasses

from sensor.model import ClientHello, Weird


def bare(hello: ClientHello | Weird | None) -> ClientHello | Weird | None:
    """The hello without what only JA4 reads (the lists as sent, the fingerprint), so a test
    about names and versions compares just those."""
    if not isinstance(hello, ClientHello):
        return hello
    return dataclasses.replace(hello, ja4=None, ciphers=(), extensions=(), signature_algorithms=())
