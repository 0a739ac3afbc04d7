"""Where telemetry can go: the names the settings accept and telemetry.py builds exporters for.

Apart from telemetry.py so that loading the settings loads no OpenTelemetry (nor what telemetry
observes: the pool, the queue, the tenants).
"""

from __future__ import annotations

from typing import Literal, get_args

ExporterKind = Literal["none", "console", "otlp"]
EXPORTERS: tuple[str, ...] = get_args(ExporterKind)
