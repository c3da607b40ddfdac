"""The Run screen's clocks, read through this module so the snapshot tests can fix them (patch
`clocks.CLOCK` and `clocks.WALL_CLOCK`) and the numbers on screen do not vary from run to run."""

from __future__ import annotations

import time

CLOCK = time.monotonic  # elapsed time, rates and ETA
WALL_CLOCK = time.time  # when a run started, for the history
