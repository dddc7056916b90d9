"""The `$metadata` document (CSDL/EDMX, OData v4) of the emulated API v2.0.

Shape as on "Use OData to return and obtain a service metadata document"
(learn.microsoft.com/dynamics365/business-central/dev-itpro/webservices/
return-obtain-service-metadata-edmx-document): `edmx:Edmx` > `edmx:DataServices` > `Schema`
with `EntityType`, `Key`/`PropertyRef` and `Property Name/Type`. API v2.0 puts its types in the
`Microsoft.NAV` namespace (the `@odata.context` and error texts name
`Microsoft.NAV.contact`). Only what the emulator serves is described: companies, contacts (the
environment's properties, so a BC without `jobTitle` has none here) and subscriptions.
"""

from __future__ import annotations

from xml.sax.saxutils import quoteattr

from contactsync.emulators.bc.state import MAX_LENGTH

_EDM_TYPES = {
    "id": "Edm.Guid",
    "type": "Microsoft.NAV.contactType",
    "contactBusinessRelation": "Microsoft.NAV.contactBusinessRelation",
    "privacyBlocked": "Edm.Boolean",
    "lastInteractionDate": "Edm.Date",
    "lastModifiedDateTime": "Edm.DateTimeOffset",
}
_COMPANY = ("id", "systemVersion", "timestamp", "name", "displayName", "businessProfileId",
            "systemCreatedAt", "systemCreatedBy", "systemModifiedAt", "systemModifiedBy")
_COMPANY_TYPES = {"id": "Edm.Guid", "timestamp": "Edm.Int64",
                  "systemCreatedAt": "Edm.DateTimeOffset", "systemCreatedBy": "Edm.Guid",
                  "systemModifiedAt": "Edm.DateTimeOffset", "systemModifiedBy": "Edm.Guid"}
_SUBSCRIPTION = ("subscriptionId", "notificationUrl", "resource", "timestamp", "userId",
                 "lastModifiedDateTime", "clientState", "expirationDateTime")


def _property(name: str, edm_type: str, max_length: int | None = None) -> str:
    length = f' MaxLength="{max_length}"' if max_length else ""
    nullable = ' Nullable="false"' if edm_type == "Edm.Guid" and name == "id" else ""
    return f"<Property Name={quoteattr(name)} Type={quoteattr(edm_type)}{nullable}{length}/>"


def _entity(name: str, key: str, properties: list[str]) -> str:
    return (f'<EntityType Name="{name}"><Key><PropertyRef Name="{key}"/></Key>'
            + "".join(properties) + "</EntityType>")


def _enum(name: str, members: tuple[str, ...]) -> str:
    return (f'<EnumType Name="{name}">'
            + "".join(f'<Member Name="{m}" Value="{i}"/>' for i, m in enumerate(members))
            + "</EnumType>")


def metadata_document(contact_fields: tuple[str, ...]) -> str:
    contact = [_property(f, _EDM_TYPES.get(f, "Edm.String"), MAX_LENGTH.get(f))
               for f in contact_fields]
    company = [_property(f, _COMPANY_TYPES.get(f, "Edm.String")) for f in _COMPANY]
    subscription = [_property(f, "Edm.String") for f in _SUBSCRIPTION]
    schema = (
        _enum("contactType", ("Company", "Person"))
        + _enum("contactBusinessRelation",
                ("None", "Vendor", "Customer", "Employee", "Bank_Account", "Multiple"))
        + _entity("company", "id", [*company, '<NavigationProperty Name="contacts" '
                                    'Type="Collection(Microsoft.NAV.contact)" '
                                    'ContainsTarget="true"/>'])
        + _entity("contact", "id", contact)
        + _entity("subscriptions", "subscriptionId", subscription)
        + '<EntityContainer Name="default">'
        '<EntitySet Name="companies" EntityType="Microsoft.NAV.company"/>'
        '<EntitySet Name="subscriptions" EntityType="Microsoft.NAV.subscriptions"/>'
        "</EntityContainer>"
    )
    return (
        '<?xml version="1.0" encoding="utf-8"?>'
        '<edmx:Edmx xmlns:edmx="http://docs.oasis-open.org/odata/ns/edmx" Version="4.0">'
        "<edmx:DataServices>"
        '<Schema xmlns="http://docs.oasis-open.org/odata/ns/edm" Namespace="Microsoft.NAV">'
        f"{schema}</Schema></edmx:DataServices></edmx:Edmx>"
    )
