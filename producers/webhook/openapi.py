"""The OpenAPI 3.1 description of the webhook, served at /openapi.json.

Kept by hand next to `parsing.py` (the models it describes) so the status codes are the real
ones. JSON Schema 2020-12 under OpenAPI 3.1: nullable is `type: [..., "null"]`.
"""

from __future__ import annotations

from typing import Any

from contactsync.producers.webhook.parsing import MAX_CLIENT_STATE, MAX_ID, MAX_RESOURCE

_ID = {"type": "string", "minLength": 1, "maxLength": MAX_ID}
_RESOURCE = {"type": "string", "minLength": 1, "maxLength": MAX_RESOURCE}
_CLIENT_STATE = {"type": ["string", "null"], "maxLength": MAX_CLIENT_STATE}
_TENANT = {"type": ["string", "null"], "maxLength": MAX_ID}
_SHORT = {"type": "string", "minLength": 1, "maxLength": 64}


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _retry_later(description: str) -> dict[str, Any]:
    response = _error(description)
    response["headers"] = {"Retry-After": {"schema": {"type": "integer", "minimum": 1}}}
    return response


_HANDSHAKE_PARAM = {
    "name": "validationToken",
    "in": "query",
    "description": "Subscription validation: echoed back, URL-decoded, as text/plain.",
    "schema": {"type": "string", "minLength": 1},
}

_HANDSHAKE_OK = {
    "description": "Validation handshake: the URL-decoded token",
    "content": {"text/plain": {"schema": {"type": "string"}}},
}


def _notification_path(summary: str, body_schema: str) -> dict[str, Any]:
    post_responses = {
        "200": _HANDSHAKE_OK,
        "202": {
            "description": "Every accepted item is on Kafka (acks=all); refused items were dropped",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Accepted"}}},
        },
        "400": _error("Malformed JSON, a body that does not match the schema, or an empty token"),
        "403": _error("Every item was refused: unknown subscription or wrong clientState"),
        "413": _error("The body is larger than the configured maximum"),
        "415": _error("The body is not application/json"),
        "503": _retry_later("Kafka (or the subscription store) could not take it: retry"),
    }
    return {
        "get": {
            "summary": f"{summary}: validation handshake",
            "operationId": f"{body_schema}Handshake",
            "parameters": [{**_HANDSHAKE_PARAM, "required": True}],
            "responses": {"200": _HANDSHAKE_OK, "400": _error("validationToken missing or empty")},
        },
        "post": {
            "summary": summary,
            "description": "With `validationToken` in the query this is the validation "
            "handshake (any body, any content type); otherwise a notification body.",
            "operationId": f"{body_schema}Notify",
            "parameters": [{**_HANDSHAKE_PARAM, "required": False}],
            "requestBody": {
                # Not required: Graph's validation handshake is a POST with an empty
                # text/plain body (Graph docs: notification endpoint validation); schemathesis
                # caught the document
                # claiming a body was required while the handshake is answered 200 without.
                "required": False,
                "content": {
                    "application/json": {"schema": {"$ref": f"#/components/schemas/{body_schema}"}}
                },
            },
            "responses": post_responses,
        },
    }


def _probe(operation_id: str, summary: str, media: str = "application/json",
           can_fail: bool = False) -> dict[str, Any]:
    responses: dict[str, Any] = {"200": {"description": "OK", "content": {media: {"schema": {}}}}}
    if can_fail:
        responses["503"] = {"description": "Not ready", "content": {media: {"schema": {}}}}
    return {"get": {"summary": summary, "operationId": operation_id, "responses": responses}}


_SCHEMAS: dict[str, Any] = {
    "GraphResourceData": {
        "type": "object",
        "properties": {
            "id": {"type": "string", "maxLength": MAX_ID},
            "@odata.etag": {"type": "string", "maxLength": MAX_ID},
            "@odata.type": {"type": "string", "maxLength": MAX_ID},
            "@odata.id": {"type": "string"},
        },
    },
    "GraphChangeNotification": {
        "type": "object",
        "required": ["subscriptionId", "changeType", "resource"],
        "not": {"required": ["lifecycleEvent"]},
        "properties": {
            "subscriptionId": _ID,
            "changeType": _SHORT,
            "resource": _RESOURCE,
            "resourceData": {
                "oneOf": [{"$ref": "#/components/schemas/GraphResourceData"}, {"type": "null"}]
            },
            "clientState": _CLIENT_STATE,
            "tenantId": _TENANT,
            "subscriptionExpirationDateTime": {"type": ["string", "null"]},
        },
    },
    "GraphLifecycleNotification": {
        "type": "object",
        "required": ["subscriptionId", "lifecycleEvent"],
        "properties": {
            "subscriptionId": _ID,
            "lifecycleEvent": {
                "type": "string",
                "enum": ["reauthorizationRequired", "subscriptionRemoved", "missed"],
            },
            "clientState": _CLIENT_STATE,
            "tenantId": _TENANT,
            "subscriptionExpirationDateTime": {"type": ["string", "null"]},
        },
    },
    "GraphNotificationCollection": {
        "type": "object",
        "required": ["value"],
        "properties": {
            "value": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "oneOf": [
                        {"$ref": "#/components/schemas/GraphChangeNotification"},
                        {"$ref": "#/components/schemas/GraphLifecycleNotification"},
                    ]
                },
            },
            "validationTokens": {"type": "array", "items": {"type": "string"}},
        },
    },
    "GraphLifecycleCollection": {
        "type": "object",
        "required": ["value"],
        "properties": {
            "value": {
                "type": "array",
                "minItems": 1,
                "items": {"$ref": "#/components/schemas/GraphLifecycleNotification"},
            }
        },
    },
    "BcNotification": {
        "type": "object",
        "required": ["subscriptionId", "changeType", "resource"],
        "properties": {
            "subscriptionId": _ID,
            "changeType": {**_SHORT, "description": "created | updated | deleted | collection"},
            "resource": _RESOURCE,
            "clientState": _CLIENT_STATE,
            "expirationDateTime": {"type": ["string", "null"]},
            "lastModifiedDateTime": {"type": ["string", "null"], "format": "date-time"},
        },
    },
    "BcNotificationCollection": {
        "type": "object",
        "required": ["value"],
        "properties": {
            "value": {
                "type": "array",
                "minItems": 1,
                "items": {"$ref": "#/components/schemas/BcNotification"},
            }
        },
    },
    "Accepted": {
        "type": "object",
        "required": ["accepted", "refused"],
        "properties": {
            "accepted": {"type": "integer", "minimum": 1},
            "refused": {"type": "integer", "minimum": 0},
        },
    },
    "Error": {
        "type": "object",
        "required": ["error", "detail"],
        "properties": {"error": {"type": "string"}, "detail": {"type": "string"}},
    },
}


def openapi_document(max_body_bytes: int) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "contactsync webhook",
            "version": "1",
            "description": "Receives Microsoft Graph and Business Central change notifications "
            "and publishes them to Kafka. 202 means every accepted item is acknowledged by the "
            "broker; 503 (Retry-After) means nothing can be promised and the sender should "
            f"retry. Bodies above {max_body_bytes} bytes are refused with 413.",
        },
        "paths": {
            "/webhooks/graph": _notification_path(
                "Graph change notifications", "GraphNotificationCollection"
            ),
            "/webhooks/graph/lifecycle": _notification_path(
                "Graph lifecycle notifications", "GraphLifecycleCollection"
            ),
            "/webhooks/bc": _notification_path(
                "Business Central notifications", "BcNotificationCollection"
            ),
            "/healthz": _probe("healthz", "Liveness: the process is up"),
            "/readyz": _probe("readyz", "Readiness: Kafka, the store and credentials are usable",
                              can_fail=True),
            "/metrics": _probe("metrics", "Prometheus metrics", "text/plain"),
        },
        "components": {"schemas": _SCHEMAS},
    }
