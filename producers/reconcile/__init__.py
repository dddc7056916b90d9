"""producers/reconcile: the full-reconcile job (docs/architecture.md "Flow"; issue 6), by job.

    schedule (nightly, @daily, cron, every N)  --+
    `contactsync reconcile` (on demand) ---------+--> sync.commands (key user id): full_sync, run_id

- `schedule`: when it runs (cron on cronsim, aliases, a time zone) and the scheduler role;
- `publisher`: the commands, published keyed by user id, acked by the broker;
- `results`: who takes the commands, and following a run's results (`reconcile --wait`).
"""

from contactsync.producers.reconcile.publisher import (
    COMMAND_TTL_S as COMMAND_TTL_S,
)
from contactsync.producers.reconcile.publisher import (
    CommandPublisher as CommandPublisher,
)
from contactsync.producers.reconcile.publisher import (
    command_event_id as command_event_id,
)
from contactsync.producers.reconcile.publisher import (
    reconcile_command as reconcile_command,
)
from contactsync.producers.reconcile.results import QUIET_NOTE_S as QUIET_NOTE_S
from contactsync.producers.reconcile.results import ResultWaiter as ResultWaiter
from contactsync.producers.reconcile.results import consumers_of as consumers_of
from contactsync.producers.reconcile.schedule import NIGHTLY as NIGHTLY
from contactsync.producers.reconcile.schedule import Schedule as Schedule
from contactsync.producers.reconcile.schedule import ScheduleError as ScheduleError
from contactsync.producers.reconcile.schedule import Scheduler as Scheduler
from contactsync.producers.reconcile.schedule import parse_schedule as parse_schedule
from contactsync.producers.reconcile.schedule import run_scheduler as run_scheduler
from contactsync.producers.reconcile.schedule import spread as spread
from contactsync.sync.run_ids import new_run_id as new_run_id  # where callers found it
