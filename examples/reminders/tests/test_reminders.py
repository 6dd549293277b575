from datetime import datetime

import pytest

from app import reminder_text


def test_reminder_names_patient_and_time():
    text = reminder_text("Ada", datetime(2026, 12, 1, 9, 30))
    assert text == "Dear Ada, this is a reminder of your appointment on Tuesday 01 December at 09:30."


def test_reminder_needs_a_patient():
    with pytest.raises(ValueError, match="patient's name"):
        reminder_text("  ", datetime(2026, 12, 1, 9, 30))
