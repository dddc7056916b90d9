"""Business Central API v2.0 emulator (contacts, subscriptions/webhooks, admin API)."""

from emulators.bc.app import BcEmulator, create_bc_app
from emulators.bc.config import BcEmulatorConfig
from emulators.bc.seed import SeedSpec

__all__ = ["BcEmulator", "BcEmulatorConfig", "SeedSpec", "create_bc_app"]
