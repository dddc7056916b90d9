"""Microsoft Graph emulator (Outlook contacts, delta, subscriptions, $batch, throttling).

emu = GraphEmulator(GraphEmulatorConfig.fast())
server = BackgroundServer(emu.app).start()      # emu.app == create_graph_app(emulator=emu)
emu.seed(users=2, contacts_per_user=25)
"""

from .app import GraphEmulator, create_graph_app
from .config import GraphEmulatorConfig, SeedSpec

__all__ = ["GraphEmulator", "GraphEmulatorConfig", "SeedSpec", "create_graph_app"]
