"""Uses the Python client openapi-python-client generated from Herald's /openapi.json, unmodified
(scripts/client-check.sh): send an email, read it back until SES accepted it, register a webhook,
list suppressions. Each answer is parsed by the generated models, so a document that says
something other than what the API answers fails here.

Then the contract's other half: for a table of invalid bodies, the document's schema (checked
with openapi-schema-validator) and the API (a plain HTTP request) must both refuse each; and a
few valid bodies both accept.

Usage: python client_check.py API_URL TOKEN OPENAPI_JSON (with the generated package
herald_api_client on PYTHONPATH).
"""

import json
import sys
import time
import uuid

import httpx
from openapi_schema_validator import OAS31Validator

from herald_api_client import AuthenticatedClient
from herald_api_client.api.emails import get_email, send_email
from herald_api_client.api.suppressions import add_suppression, list_suppressions
from herald_api_client.api.webhooks import create_webhook, get_webhook
from herald_api_client.models import (
    AddSuppression,
    CreateWebhook,
    EmailView,
    Enqueued,
    EventType,
    RawEmail,
    Suppression,
    SuppressionPage,
    WebhookView,
)


def check(condition, what):
    if not condition:
        sys.exit(f"client_check: {what}")
    print(f"client_check: ok: {what}")


def main(api_url, token):
    # raise_on_unexpected_status: an answer whose status the document does not list fails.
    client = AuthenticatedClient(base_url=api_url, token=token, raise_on_unexpected_status=True)
    to = f"client-{uuid.uuid4().hex[:12]}@example.com"

    request = RawEmail.from_dict(
        {
            "to": f"Client Check <{to}>",
            "cc": [{"email": "cc-" + to, "name": "Copy"}],
            "subject": "From the generated client",
            "text": "Hello",
            "html": "<p>Hello</p>",
            "category": "transactional",
            "tags": {"source": "client-check"},
        }
    )
    with client as c:
        sent = send_email.sync_detailed(client=c, body=request, idempotency_key=to)
        check(sent.status_code == 202 and isinstance(sent.parsed, Enqueued), f"sendEmail answered {sent.status_code}")
        job_id = sent.parsed.job_id
        again = send_email.sync_detailed(client=c, body=request, idempotency_key=to)
        check(
            again.status_code == 202
            and again.parsed.job_id == job_id
            and again.headers.get("Idempotent-Replayed") == "true",
            "a replay answers the same job and says so",
        )

        deadline = time.monotonic() + 60
        while True:
            got = get_email.sync_detailed(job_id, client=c)
            check(got.status_code == 200 and isinstance(got.parsed, EmailView), "getEmail answers the email")
            email = got.parsed
            if email.status == "sent" or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        check(email.status == "sent", f"the worker sent it (status {email.status})")
        check([m.email for m in email.to] == [to] and email.to[0].name == "Client Check", "to, with its name")
        check([m.email for m in email.cc] == ["cc-" + to], "cc")
        check(email.tags.additional_properties == {"source": "client-check"}, "tags")
        check(email.subject == "From the generated client", "subject")
        events = [e.event for e in email.timeline]
        check(events[0] == "queued" and "sent" in events, f"timeline {events}")
        check(bool(email.ses_message_id), "SES's message id")

        hook = create_webhook.sync_detailed(
            client=c,
            body=CreateWebhook(
                url="http://127.0.0.1:9/herald-client-check",
                events=[EventType.EMAIL_SENT, EventType.EMAIL_OPENED, EventType.EMAIL_CLICKED],
            ),
        )
        check(hook.status_code == 201 and isinstance(hook.parsed, WebhookView), f"createWebhook answered {hook.status_code}")
        check(hook.parsed.secret and hook.parsed.secret.startswith("whsec_"), "the secret, shown once")
        read = get_webhook.sync_detailed(str(hook.parsed.id), client=c)
        check(read.status_code == 200 and read.parsed.events == hook.parsed.events, "getWebhook reads it back")

        added = add_suppression.sync_detailed(
            client=c, body=AddSuppression.from_dict({"email": "blocked-" + to, "type": "manual", "reason": "client check"})
        )
        check(added.status_code in (200, 201) and isinstance(added.parsed, Suppression), f"addSuppression answered {added.status_code}")
        page = list_suppressions.sync_detailed(client=c, email="blocked-" + to)
        check(page.status_code == 200 and isinstance(page.parsed, SuppressionPage), "listSuppressions answers a page")
        check([s.email for s in page.parsed.items] == ["blocked-" + to], "the suppression is listed")


# (route, component schema, body, why it is invalid); both the schema and the API must refuse it.
INVALID = [
    ("/v1/emails", "SendEmailRequest", {"to": "a@example.com", "subject": "Hi", "text": "x", "category": "promo"}, "unknown category"),
    ("/v1/emails", "SendEmailRequest", {"to": "a@example.com", "template": "welcome", "subject": "Hi"}, "template and subject"),
    ("/v1/emails", "SendEmailRequest", {"to": "a@example.com", "template": "welcome", "text": "x"}, "template and text"),
    ("/v1/emails", "SendEmailRequest", {"to": "a@example.com"}, "neither template nor subject"),
    ("/v1/emails", "SendEmailRequest", {"to": "a@example.com", "subject": "Hi"}, "subject without text or html"),
    ("/v1/emails", "SendEmailRequest", {"to": "a@example.com", "subject": "Hi", "text": ""}, "an empty text alone"),
    ("/v1/emails", "SendEmailRequest", {"to": "a@example.com", "subject": "", "text": "x"}, "an empty subject"),
    ("/v1/emails", "SendEmailRequest", {"to": "a@example.com", "subject": "Hi", "text": "x", "locale": "de"}, "locale without template"),
    ("/v1/emails", "SendEmailRequest", {"to": "not-an-address", "subject": "Hi", "text": "x"}, "no @ in to"),
    ("/v1/emails", "SendEmailRequest", {"to": {"email": "nobody"}, "subject": "Hi", "text": "x"}, "no @ in to.email"),
    ("/v1/emails", "SendEmailRequest", {"subject": "Hi", "text": "x"}, "no to"),
    ("/v1/emails", "SendEmailRequest", {"to": "a@example.com", "subject": "Hi", "text": "x", "colour": "red"}, "an unknown field"),
    ("/v1/emails", "SendEmailRequest", {"to": "a@example.com", "subject": "Hi", "text": "x", "tags": {f"t{i}": "v" for i in range(11)}}, "11 tags"),
    ("/v1/emails", "SendEmailRequest", {"to": "a@example.com", "subject": "Hi", "text": "x", "cc": [f"c{i}@example.com" for i in range(50)]}, "50 cc"),
    ("/v1/emails/batch", "BatchRequest", {"emails": []}, "an empty batch"),
    ("/v1/webhooks", "CreateWebhook", {"url": "http://127.0.0.1:9/x", "events": ["email.nope"]}, "an unknown event type"),
    ("/v1/webhooks", "CreateWebhook", {"url": "http://127.0.0.1:9/x", "events": []}, "no event type"),
    ("/v1/suppressions", "AddSuppression", {"email": "x@example.com", "type": "spam"}, "an unknown suppression type"),
]

# Bodies both must accept (so the schema is not stricter than the API where it matters).
VALID = [
    ("/v1/emails", "SendEmailRequest", {"to": "Ada Lovelace <ada@example.com>", "subject": "Hi", "html": "<p>x</p>", "text": None}),
    ("/v1/emails", "SendEmailRequest", {"to": [{"email": "ada@example.com", "name": "Ada"}, "bo@example.com"], "subject": "Hi", "text": "x", "tags": {"a": "b"}}),
    ("/v1/emails", "SendEmailRequest", {"to": "ada@example.com", "template": "notification", "data": {"title": "T", "message": "M"}, "subject": None}),
]


# (route, query parameter, value): the parameter's schema and the API must both refuse it.
INVALID_QUERIES = [
    ("/v1/jobs", "state", "nope"),
    ("/v1/jobs", "queue", "herald.nope"),
    ("/v1/jobs", "category", "promo"),
    ("/v1/emails", "status", "delivered"),
    ("/v1/suppressions", "type", "spam"),
    ("/v1/suppressions", "limit", 501),
    ("/v1/suppressions", "limit", 0),
]


def contract(api_url, token, document):
    doc = json.load(open(document))
    components = {"components": doc["components"]}
    http = httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    for route, schema, body, why in INVALID:
        validator = OAS31Validator({"$ref": f"#/components/schemas/{schema}", **components})
        schema_refuses = not validator.is_valid(body)
        answer = http.post(route, json=body)
        check(
            schema_refuses and answer.status_code == 422,
            f"{why}: the schema {'refuses' if schema_refuses else 'ACCEPTS'} it, the API answers {answer.status_code}",
        )
    for route, name, value in INVALID_QUERIES:
        (param,) = [p for p in doc["paths"][route]["get"]["parameters"] if p["name"] == name]
        schema_refuses = not OAS31Validator({**param["schema"], **components}).is_valid(value)
        answer = http.get(route, params={name: value})
        check(
            schema_refuses and answer.status_code == 422,
            f"{route}?{name}={value}: the schema {'refuses' if schema_refuses else 'ACCEPTS'} it, the API answers {answer.status_code}",
        )
    for route, schema, body in VALID:
        validator = OAS31Validator({"$ref": f"#/components/schemas/{schema}", **components})
        errors = [e.message for e in validator.iter_errors(body)]
        answer = http.post(route, json=body)
        check(not errors and answer.status_code in (200, 201, 202), f"valid {body}: schema {errors or 'accepts'}, API {answer.status_code}")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
    contract(sys.argv[1], sys.argv[2], sys.argv[3])
