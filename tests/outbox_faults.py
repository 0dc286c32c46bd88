"""An outbox consumer that kills its process, for tests of relay crashes.

Named in Settings.outbox_consumers (``tests.outbox_faults:crash_after_delivery``), it comes
after the real consumers, so the first time it is called the relay has delivered a claim to
them and not yet marked the rows: it then exits the process at once (os._exit, no cleanup,
like a segfault or a kill -9), leaving a marker so that the restarted relay goes on.
"""

from __future__ import annotations

import os
from pathlib import Path

MARKER = "relay-crashed"


class CrashAfterDelivery:
    name = "crash"

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def select(self, events):
        return events

    def deliver(self, events, deadline):
        if not self.marker.exists():
            self.marker.write_text(",".join(e.event_id for e in events))
            os._exit(1)
        return {e.event_id: None for e in events}


def crash_after_delivery(settings) -> CrashAfterDelivery:
    return CrashAfterDelivery(Path(settings.home) / MARKER)
