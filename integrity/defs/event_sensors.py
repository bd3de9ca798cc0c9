"""Event-driven triggers: new objects, bucket notifications and remediation's re-queue.

(Being built for issue 4.)
"""

from __future__ import annotations

import dagster as dg

event_sensors: list[dg.SensorDefinition] = []
