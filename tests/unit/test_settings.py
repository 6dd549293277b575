"""Conveyor's yes/no settings (``[conveyor] strict``, ``gate_deferrable``): every usual spelling is read, and a
typo is an error that names the setting and how to fix it, never a silent false."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from conveyor import settings
from conveyor.exceptions import ConfigurationError

FLAGS: dict[str, Callable[[], bool]] = {"strict": settings.strict, "gate_deferrable": settings.gate_deferrable}


@pytest.mark.parametrize("key", FLAGS)
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("true", True),
        ("True", True),
        ("TRUE", True),
        ("1", True),
        ("yes", True),
        ("Yes", True),
        ("on", True),
        ("ON", True),
        (" true ", True),
        ("false", False),
        ("False", False),
        ("0", False),
        ("no", False),
        ("NO", False),
        ("off", False),
        ("Off", False),
        ("\tfalse\n", False),
    ],
)
def test_every_usual_spelling_is_read(key: str, value: str, expected: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(f"AIRFLOW__CONVEYOR__{key.upper()}", value)
    assert FLAGS[key]() is expected


def test_unset_flags_take_their_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in FLAGS:
        monkeypatch.delenv(f"AIRFLOW__CONVEYOR__{key.upper()}", raising=False)
    assert settings.strict() is False
    assert settings.gate_deferrable() is True


@pytest.mark.parametrize("key", FLAGS)
@pytest.mark.parametrize("value", ["ture", "flase", "y", "enabled", "", "true # for CI"])
def test_a_typo_names_the_setting_and_the_fix(key: str, value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(f"AIRFLOW__CONVEYOR__{key.upper()}", value)
    with pytest.raises(ConfigurationError) as raised:
        FLAGS[key]()
    message = str(raised.value)
    assert message.startswith(f"[conveyor] {key} is {value!r}, not true or false.")
    assert f"Set [conveyor] {key} in airflow.cfg, or AIRFLOW__CONVEYOR__{key.upper()}," in message
    assert re.search(r"true/false, 1/0, yes/no, on/off \(any case\)", message)
