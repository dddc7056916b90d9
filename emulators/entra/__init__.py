"""A local Microsoft Entra ID token endpoint (client credentials), served over TLS on loopback:
azure-identity accepts only an https authority (AZURE_AUTHORITY_HOST)."""

from contactsync.emulators.entra.app import EntraEmulator, create_entra_app
from contactsync.emulators.entra.tls import LocalCertificate, local_certificate

__all__ = ["EntraEmulator", "LocalCertificate", "create_entra_app", "local_certificate"]
