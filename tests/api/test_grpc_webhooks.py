"""Webhook endpoints over gRPC (``WebhookService``, protos/tunery/v1/webhooks.proto), each RPC the twin of its
``/v1/webhook_endpoints`` route, through grpc_cases' cases and helpers: the same answers, the secret shown once, the
same refusals mapped to status codes with OpenAI's error, the owner-only rule and tenancy. Also a project's secrets
(``SecretService``, the other owner-only family), the jobs' eval report RPCs' refusals, and an id over 256
characters refused as REST refuses it, for every RPC that takes one."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from api.grpc.calls import REST_TWIN
from tests import fuzzing
from tests.conftest import TINY, RunningServer
from tests.grpc_cases import KEY, Api, Case, assert_same_answer, assert_same_refusal, project_keys, rest
from tests.webhook_receiver import receiver
from tunery.v1 import fine_tuning_pb2 as jpb
from tunery.v1 import secrets_pb2 as spb
from tunery.v1 import webhooks_pb2 as wpb

W = "/v1/webhook_endpoints"
CANCELLED = "fine_tuning.job.cancelled"


@pytest.fixture
def api(tiny_server_factory: Callable[..., RunningServer]) -> Iterator[Api]:
    """grpc_api's server (a key; nothing launches) that may send to a receiver on loopback, retrying at once."""
    server = fuzzing.authorised(
        tiny_server_factory(
            api_keys=[KEY], max_concurrent_runs=0, webhooks_allow_private=True, webhook_retry_base_seconds=0.05
        )
    )
    objects = fuzzing.seed_objects(server)
    with grpc.insecure_channel(server.grpc_address) as channel:
        yield Api(server, channel, objects)


GET = Case(
    "WebhookService/GetWebhookEndpoint",
    lambda o: wpb.GetWebhookEndpointRequest(webhook_endpoint_id=o["endpoint"]),
    f"{W}/{{endpoint}}",
)
DELETE = Case(
    "WebhookService/DeleteWebhookEndpoint",
    lambda o: wpb.GetWebhookEndpointRequest(webhook_endpoint_id=o["endpoint"]),
    f"{W}/{{endpoint}}",
)
DELIVERIES = Case(
    "WebhookService/ListWebhookDeliveries",
    lambda o: wpb.ListWebhookDeliveriesRequest(webhook_endpoint_id=o["endpoint"]),
    f"{W}/{{endpoint}}/deliveries",
)
REDELIVER = Case(
    "WebhookService/RedeliverWebhookDelivery",
    lambda o: wpb.RedeliverWebhookDeliveryRequest(webhook_endpoint_id=o["endpoint"], delivery_id=o["delivery"]),
    f"{W}/{{endpoint}}/deliveries/{{delivery}}/redeliver",
)


def create(**body: Any) -> Case:
    return Case(
        "WebhookService/CreateWebhookEndpoint", lambda o: wpb.CreateWebhookEndpointRequest(**body), W, None, body
    )


def update(**body: Any) -> Case:
    return Case(
        "WebhookService/UpdateWebhookEndpoint",
        lambda o: wpb.UpdateWebhookEndpointRequest(webhook_endpoint_id=o["endpoint"], **body),
        f"{W}/{{endpoint}}",
        None,
        body,
    )


def listing(**query: Any) -> Case:
    return Case("WebhookService/ListWebhookEndpoints", lambda o: wpb.ListWebhookEndpointsRequest(**query), W, query)


def delivered(api: Api, endpoint: str, attempts: int, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        log: dict[str, Any] = api.server.http.get(f"{W}/{endpoint}/deliveries").json()
        d = log["data"][0] if log["data"] else {}
        if d.get("status") == "delivered" and d.get("attempts") == attempts:
            return d
        assert time.monotonic() < deadline, log
        time.sleep(0.1)


def test_endpoints_made_read_changed_and_deleted_over_grpc_are_rests(api: Api) -> None:
    with receiver() as r:
        made = api.call(
            "WebhookService/CreateWebhookEndpoint",
            wpb.CreateWebhookEndpointRequest(name="ci", url=r.url, event_types=[CANCELLED]),
        )
        # The secret in the creation's answer, and never again: REST's read shows its hint only.
        assert made.id.startswith("whep_") and made.signing_secret.startswith("whsec_")
        assert made.signing_secret_hint == f"whsec_...{made.signing_secret[-4:]}"
        o = {**api.objects, "endpoint": made.id}
        got = assert_same_answer(api, GET, o)
        assert not got.HasField("signing_secret") and list(got.event_types) == [CANCELLED]
        other = api.call("WebhookService/CreateWebhookEndpoint", wpb.CreateWebhookEndpointRequest(name="b", url=r.url))
        page = assert_same_answer(api, listing(limit=1), o)
        assert [e.id for e in page.data] == [other.id] and page.has_more
        assert all(not e.HasField("signing_secret") for e in assert_same_answer(api, listing(), o).data)

        changed = api.call(
            "WebhookService/UpdateWebhookEndpoint",
            wpb.UpdateWebhookEndpointRequest(webhook_endpoint_id=made.id, name="renamed"),
        )
        # Only the field given changes.
        assert (changed.name, changed.url, list(changed.event_types)) == ("renamed", r.url, [CANCELLED])
        assert changed == assert_same_answer(api, GET, o)

        # A job's end is delivered; its log and a redelivery read the same over both transports.
        client = api.server.client
        client.fine_tuning.jobs.cancel(client.fine_tuning.jobs.create(model=TINY, training_file=o["file_id"]).id)
        first = r.wait_for(1)[0]
        d = delivered(api, made.id, attempts=1)
        assert d["id"] == first.headers["webhook-id"] and d["event_type"] == CANCELLED
        log = assert_same_answer(api, DELIVERIES, o)
        assert [x.id for x in log.data] == [d["id"]] and log.data[0].last_status_code == 200
        again = api.call(
            "WebhookService/RedeliverWebhookDelivery",
            wpb.RedeliverWebhookDeliveryRequest(webhook_endpoint_id=made.id, delivery_id=d["id"]),
        )
        assert again.status == "pending" and again.id == d["id"]
        assert r.wait_for(2)[1].body == first.body
        delivered(api, made.id, attempts=2)

        gone = api.call(
            "WebhookService/DeleteWebhookEndpoint", wpb.GetWebhookEndpointRequest(webhook_endpoint_id=made.id)
        )
        assert (gone.id, gone.object, gone.deleted) == (made.id, "webhook_endpoint.deleted", True)
        assert assert_same_refusal(api, GET, o)["status"] == 404
        metrics = api.server.http.get("/metrics").text
        assert 'tunery_grpc_requests_total{code="OK",rpc="CreateWebhookEndpoint"} 2.0' in metrics


LONG = "x" * 257
REFUSALS = [
    pytest.param(create(name="a", url="http://127.0.0.1:1/hook", event_types=["nope.event"]), 400, id="bad-event"),
    pytest.param(create(name="a", url="ftp://8.8.8.8/hook"), 400, id="not-http"),
    pytest.param(create(url="https://8.8.8.8/hook"), 400, id="no-name"),
    pytest.param(GET, 404, id="get-unknown"),
    pytest.param(DELETE, 404, id="delete-unknown"),
    pytest.param(DELIVERIES, 404, id="deliveries-unknown"),
    pytest.param(REDELIVER, 404, id="redeliver-unknown"),
    pytest.param(update(name="b"), 404, id="update-unknown"),
    pytest.param(listing(limit=0), 400, id="list-limit-0"),
]


@pytest.mark.parametrize(("case", "status"), REFUSALS)
def test_refusals_are_rests(api: Api, case: Case, status: int) -> None:
    error = assert_same_refusal(api, case, {**api.objects, "endpoint": "whep_nope", "delivery": "whdel_nope"})
    assert error["status"] == status, error


def test_only_an_owner_or_the_admin_may_call_them_and_another_projects_are_not_found(api: Api) -> None:
    made = api.call(
        "WebhookService/CreateWebhookEndpoint",
        wpb.CreateWebhookEndpointRequest(name="ci", url="https://8.8.8.8/hook"),
    )
    _, keys = project_keys(api, "b", "owner", "member", "reader")
    o = {**api.objects, "endpoint": made.id}
    for role in ("member", "reader"):  # a project's endpoints are its owner's: even a read is a 403
        for case in (GET, listing(), create(name="x", url="https://8.8.8.8/hook")):
            assert assert_same_refusal(api, case, o, key=keys[role])["status"] == 403, (role, case.rpc)
    # Its owner sees its own project's endpoints only: another's is one that never existed.
    assert assert_same_refusal(api, GET, o, key=keys["owner"])["status"] == 404
    mine = api.call("WebhookService/ListWebhookEndpoints", wpb.ListWebhookEndpointsRequest(), key=keys["owner"])
    assert list(mine.data) == []


def test_the_eval_report_rpcs_are_the_rest_routes(api: Api) -> None:
    o = {**api.objects, "checkpoint_id": "ftckpt-nope"}  # a queued job: no report yet, the same NOT_FOUND
    job = Case(
        "FineTuningService/GetJobEvalReport",
        lambda o: jpb.JobRequest(job_id=o["job_id"]),
        "/v1/fine_tuning/jobs/{job_id}/eval_report",
    )
    ckpt = Case(
        "FineTuningService/GetCheckpointEvalReport",
        lambda o: jpb.GetCheckpointEvalReportRequest(job_id=o["job_id"], checkpoint_id=o["checkpoint_id"]),
        "/v1/fine_tuning/jobs/{job_id}/checkpoints/{checkpoint_id}/eval_report",
    )
    for case in (job, ckpt):
        for objects in (o, {**o, "job_id": "ftjob-nope"}):
            assert assert_same_refusal(api, case, objects)["status"] == 404, case.rpc


def test_an_id_over_256_characters_is_refused_as_rest_refuses_it(api: Api) -> None:
    """Every RPC whose REST twin takes an id in its path (typed as that route types it, read from the route): an
    empty one or one over 256 characters is REST's 400 (INVALID_ARGUMENT naming it), not a NOT_FOUND."""
    from google.protobuf import message_factory

    from api.grpc.handlers import path_fields
    from api.grpc.server import MODULES

    checked = 0
    for module in MODULES:
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                fields = path_fields(service, method)
                if not fields or method.client_streaming:
                    continue
                rpc = f"{service.name}/{method.name}"
                request = message_factory.GetMessageClass(method.input_type)()
                path = REST_TWIN[rpc][1].replace(":path}", "}")  # a model id: a path of its own in REST
                values = {}
                for name, _ in fields:
                    setattr(request, name, LONG)
                    values[name] = LONG
                body = {"name": "a", "url": "https://8.8.8.8/hook"} if REST_TWIN[rpc][0] == "POST" else None
                case = Case(rpc, lambda o, r=request: r, path, None, body)  # type: ignore[misc]
                if method.server_streaming:  # its error comes with the stream's first read
                    r = rest(api, case, values)
                    with pytest.raises(grpc.RpcError) as caught:
                        list(api.call(rpc, request))
                    assert r.status_code == 400 and caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, rpc
                    assert caught.value.details() == r.json()["error"]["message"], rpc
                    checked += 1
                    continue
                error = assert_same_refusal(api, case, values)
                assert (error["status"], error["param"]) == (400, fields[0][0]), (rpc, error)
                checked += 1
    assert checked >= 25  # jobs, files, evaluations, exports, aliases, webhooks...


SECRETS = "/v1/tunery/secrets"
LIST_SECRETS = Case("SecretService/ListSecrets", lambda o: spb.ListSecretsRequest(), SECRETS)


def set_secret(name: str, value: str) -> Case:
    return Case(
        "SecretService/SetSecret",
        lambda o: spb.SetSecretRequest(name=name, value=value),
        f"{SECRETS}/{name}",
        None,
        {"value": value},
    )


def delete_secret(name: str) -> Case:
    return Case("SecretService/DeleteSecret", lambda o: spb.DeleteSecretRequest(name=name), f"{SECRETS}/{name}")


def test_secrets_over_grpc_are_rests_and_never_answer_a_value(api: Api) -> None:
    o = api.objects
    made = api.call("SecretService/SetSecret", spb.SetSecretRequest(name="WANDB_API_KEY", value="s3cr3t-value"))
    assert (made.object, made.name) == ("tunery.secret", "WANDB_API_KEY") and made.created_at > 0
    listed = assert_same_answer(api, LIST_SECRETS, o)
    assert [x.name for x in listed.data] == ["WANDB_API_KEY"]
    assert "s3cr3t-value" not in str(listed) + str(made)
    gone = api.call("SecretService/DeleteSecret", spb.DeleteSecretRequest(name="WANDB_API_KEY"))
    assert (gone.name, gone.deleted) == ("WANDB_API_KEY", True)
    assert list(assert_same_answer(api, LIST_SECRETS, o).data) == []
    # The same refusals: a name outside the closed set, one the project has not set.
    assert assert_same_refusal(api, set_secret("AWS_SECRET_ACCESS_KEY", "x"), o)["param"] == "name"
    assert assert_same_refusal(api, delete_secret("WANDB_API_KEY"), o)["code"] == "secret_not_found"
    with pytest.raises(grpc.RpcError) as caught:  # proto3 cannot tell an empty value from none: a missing one
        api.call("SecretService/SetSecret", spb.SetSecretRequest(name="WANDB_API_KEY"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "'value'" in (caught.value.details() or "")
    # Only an owner or the admin: a member's key is refused, as over REST.
    member = project_keys(api, "s", "member")[1]["member"]
    for case in (LIST_SECRETS, set_secret("WANDB_API_KEY", "x"), delete_secret("WANDB_API_KEY")):
        assert assert_same_refusal(api, case, o, key=member)["status"] == 403, case.rpc
