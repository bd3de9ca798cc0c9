"""Asset checks on the reconciliation graph. (Being built for issue 5.)"""

from __future__ import annotations

import dagster as dg

reconciliation_checks: list[dg.AssetChecksDefinition] = []
