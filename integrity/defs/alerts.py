"""Alerts: check transitions and failed runs reach a person once. (Being built for issue 5.)"""

from __future__ import annotations

import dagster as dg

alert_sensors: list[dg.SensorDefinition] = []
