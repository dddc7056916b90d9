"""The pipeline's role names, apart from contactsync.pipeline: `contactsync run` shows them in
its help, and the CLI's start should not load the pipeline (logging, the store) for that."""

from __future__ import annotations

ALL_ROLES = ("webhook", "subscriptions", "bc-changes", "router", "applier", "reconcile")
