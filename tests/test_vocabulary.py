"""The shared vocabulary is spelled once, in sensor/model.py; everything else derives from it."""

from __future__ import annotations

import dataclasses
import typing

from sensor import model
from sensor.config import IdentifiersConfig
from sensor.detect import identifiers


def test_identifier_kinds_are_the_models() -> None:
    assert typing.get_args(model.IdentifierKind) == model.IDENTIFIER_KINDS
    assert "contacts" in model.IDENTIFIER_KINDS and "contacts" not in model.VALUE_KINDS
    assert set(model.VALUE_KINDS) | {"contacts"} == set(model.IDENTIFIER_KINDS)
    assert identifiers.KINDS is model.IDENTIFIER_KINDS
    assert frozenset(model.VALUE_KINDS) == identifiers.LEARNABLE_KINDS
    assert identifiers.ENCODINGS is model.ENCODINGS


def test_identifiers_section_has_one_field_per_value_kind() -> None:
    fields = tuple(f.name for f in dataclasses.fields(IdentifiersConfig))
    assert fields == model.VALUE_KINDS


def test_alert_rules_and_severities_are_the_models() -> None:
    from sensor import alerts

    assert alerts.RULES is model.RULES
    severities = set(typing.get_args(model.Severity))
    assert {r.severity for r in model.RULES.values()} <= severities
    assert all(name == rule.name for name, rule in model.RULES.items())
