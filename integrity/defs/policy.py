"""The auto-remediation policy: what runs after each reconciliation. (Being built for issue 5.)"""

from __future__ import annotations

import dagster as dg

policy_sensors: list[dg.SensorDefinition] = []
