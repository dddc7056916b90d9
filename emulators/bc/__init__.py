"""Business Central API v2.0 emulator (contacts, subscriptions/webhooks, admin API)."""

from contactsync.emulators.bc.app import BcEmulator, create_bc_app
from contactsync.emulators.bc.config import BcEmulatorConfig
from contactsync.emulators.bc.seed import SeedSpec

__all__ = ["BcEmulator", "BcEmulatorConfig", "SeedSpec", "create_bc_app"]
