"""The Kubernetes backend end to end, against a real kube-apiserver + controller-manager + scheduler (v1.20) with
the test kubelet running pods as local processes: a job created through the OpenAI SDK trains in a real Job's pod.

Also: cancel deletes the Job and its pods; an unschedulable pod becomes one job event; a pod killed mid-run is
restarted from its last checkpoint (or fails the job past TUNERY_MAX_RUN_RETRIES); a restarted scheduler adopts a
running Job; multi-node runs are refused on 1.20; manifests pass the live server's validation; leader election
through a Lease.
"""

from __future__ import annotations

import base64
import re
import sys
import time
from typing import Any

import pytest
from kubernetes import client

from scheduler.k8s import KubernetesBackend
from scheduler.k8s_manifests import LABEL_JOB, LABEL_RUN, TOKEN_KEY, job_manifest, make_handle, run_token_secret_name
from tests.conftest import TINY, chat_lines, free_port
from tests.kube.fixtures import kube_api, kube_cluster, kube_namespace, kubelet  # noqa: F401 - fixtures
from tunery.jobspec import RUN_TOKEN_ENV
from tunery.settings import Settings

pytestmark = pytest.mark.integration  # trains through the trainer, or runs a cluster: make test, not test-fast


@pytest.fixture
def k8s_server(tiny_server_factory, kube_cluster, kube_namespace):  # noqa: F811
    def make(**over: Any):
        opts: dict[str, Any] = {
            "scheduler_backend": "kubernetes",
            "k8s_kubeconfig": str(kube_cluster.kubeconfig),
            "k8s_namespace": kube_namespace,
            "k8s_trainer_image": "tunery/trainer:test",
            "k8s_trainer_command": [sys.executable, "-m", "trainer"],
            "k8s_gpus_per_job": 1,
        }
        opts.update(over)
        return tiny_server_factory(**opts)

    return make


def _jobs(api, ns: str) -> list[Any]:
    return client.BatchV1Api(api).list_namespaced_job(ns, label_selector=LABEL_JOB).items


def _pods(api, ns: str) -> list[Any]:
    return client.CoreV1Api(api).list_namespaced_pod(ns, label_selector=LABEL_JOB).items


def _state(api, ns: str) -> str:
    jobs = [(j.metadata.name, j.metadata.deletion_timestamp, j.metadata.finalizers) for j in _jobs(api, ns)]
    pods = [(p.metadata.name, p.status.phase, p.metadata.deletion_timestamp) for p in _pods(api, ns)]
    return f"jobs {jobs}, pods {pods}"


def _wait(cond, timeout: float, what: Any) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what() if callable(what) else what}")


def _wait_metrics(srv, job_id: str) -> None:
    _wait(
        lambda: any(e.type == "metrics" for e in srv.client.fine_tuning.jobs.list_events(job_id, limit=10).data),
        180,
        f"a metrics event of {job_id}: {srv.events(job_id)}",
    )


def _long_job(srv) -> Any:
    f = srv.client.files.create(file=("train.jsonl", chat_lines(40)), purpose="fine-tune")
    return srv.client.fine_tuning.jobs.create(
        model=TINY, training_file=f.id, hyperparameters={"n_epochs": 50, "batch_size": 1}
    )


def test_job_trains_through_a_kubernetes_job(k8s_server, kube_api, kube_namespace, kubelet):  # noqa: F811
    client.CoreV1Api(kube_api).create_namespaced_secret(
        kube_namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="trainer-creds"), string_data={"AWS_SECRET_ACCESS_KEY": "s3"}
        ),
    )
    srv = k8s_server(k8s_credentials_secret="trainer-creds")
    f = srv.client.files.create(file=("train.jsonl", chat_lines(12)), purpose="fine-tune")
    job = srv.client.fine_tuning.jobs.create(
        model=TINY, training_file=f.id, hyperparameters={"n_epochs": 1, "batch_size": 4}, suffix="kube"
    )
    done = srv.wait_job(job.id, {"succeeded", "failed", "cancelled"}, timeout=300)
    events = srv.events(job.id)
    assert done.status == "succeeded", events
    assert done.fine_tuned_model and done.fine_tuned_model in {m.id for m in srv.client.models.list().data}
    assert "The job has successfully completed" in events

    # The trainer reports success, then exits: the Job completes right after.
    [kjob] = _wait(
        lambda: [
            j
            for j in _jobs(kube_api, kube_namespace)
            if any(c.type == "Complete" and c.status == "True" for c in j.status.conditions or [])
        ],
        60,
        "the Job complete",
    )
    assert kjob.metadata.labels[LABEL_JOB] == job.id and kjob.metadata.labels[LABEL_RUN]
    assert kjob.spec.backoff_limit == 0
    [pod] = _pods(kube_api, kube_namespace)
    assert pod.status.phase == "Succeeded" and pod.spec.restart_policy == "Never"
    assert pod.status.container_statuses[0].state.terminated.exit_code == 0
    container = pod.spec.containers[0]
    # The trainer got its JobSpec by reference (object-store URL + key), not inline.
    assert container.command[:3] == [sys.executable, "-m", "trainer"]
    assert container.command[3] == "--spec" and container.command[4].endswith(f"#jobs/{job.id}/spec.json")
    assert container.resources.limits == {"nvidia.com/gpu": "1"}
    assert pod.spec.node_name in ("gpu-node-1", "gpu-node-2")
    # The credentials Secret's keys reached the trainer's environment (envFrom), with the run's own variables.
    env = kubelet.envs[f"{kube_namespace}/{pod.metadata.name}"]
    assert (
        env["AWS_SECRET_ACCESS_KEY"] == "s3" and env["TUNERY_JOB_ID"] == job.id and env["POD_NAME"] == pod.metadata.name
    )
    # The run's token came from its own Secret, owned by the Job; the spec every trainer can read holds none.
    token = env[RUN_TOKEN_ENV]
    secret = client.CoreV1Api(kube_api).read_namespaced_secret(
        run_token_secret_name(kjob.metadata.name), kube_namespace
    )
    assert base64.b64decode(secret.data[TOKEN_KEY]).decode() == token and len(token) >= 32
    assert [(o.kind, o.uid) for o in secret.metadata.owner_references] == [("Job", kjob.metadata.uid)]
    assert token not in srv.app.state.ctx.store.get_bytes(f"jobs/{job.id}/spec.json").decode()

    # The finished Job stays for TUNERY_K8S_FINISHED_JOB_TTL_SECONDS (an hour by default), then goes with its pod.
    # A Job whose run is still recorded on a job (its outcome not taken in yet) is never swept.
    hour = KubernetesBackend(Settings(k8s_namespace=kube_namespace), api=kube_api)
    hour.sweep(set())
    now = KubernetesBackend(Settings(k8s_namespace=kube_namespace, k8s_finished_job_ttl_seconds=0), api=kube_api)
    now.sweep({make_handle(kube_namespace, kjob.metadata.name)})
    assert [j.metadata.uid for j in _jobs(kube_api, kube_namespace)] == [kjob.metadata.uid]
    now.sweep(set())
    _wait(lambda: not _jobs(kube_api, kube_namespace) and not _pods(kube_api, kube_namespace), 60,
          lambda: _state(kube_api, kube_namespace))  # fmt: skip
    assert not client.CoreV1Api(kube_api).list_namespaced_secret(kube_namespace, label_selector=LABEL_JOB).items
    assert srv.client.fine_tuning.jobs.retrieve(job.id).status == "succeeded"


def test_cancel_deletes_the_job_and_its_pods(k8s_server, kube_api, kube_namespace, kubelet):  # noqa: F811
    srv = k8s_server()
    job = _long_job(srv)
    _wait_metrics(srv, job.id)
    [pod] = _pods(kube_api, kube_namespace)
    proc = kubelet.process_of(kube_namespace, pod.metadata.name)
    assert proc is not None and proc.proc.poll() is None

    assert srv.client.fine_tuning.jobs.cancel(job.id).status == "cancelled"
    _wait(
        lambda: not _jobs(kube_api, kube_namespace) and not _pods(kube_api, kube_namespace),
        60,
        lambda: f"Job and pod gone: {_state(kube_api, kube_namespace)}",
    )
    assert proc.proc.poll() is not None  # the trainer process was stopped with its pod
    final = srv.client.fine_tuning.jobs.retrieve(job.id)
    assert final.status == "cancelled" and final.fine_tuned_model is None


def test_unschedulable_pod_becomes_one_event(k8s_server, kube_api, kube_namespace):  # noqa: F811
    srv = k8s_server(k8s_gpus_per_job=4)  # the test nodes have 2 GPUs each
    f = srv.client.files.create(file=("train.jsonl", chat_lines(12)), purpose="fine-tune")
    job = srv.client.fine_tuning.jobs.create(model=TINY, training_file=f.id)

    def unschedulable() -> list[str]:
        return [m for m in srv.events(job.id) if "unschedulable" in m]

    [msg] = _wait(unschedulable, 60, "an unschedulable event")
    assert "nvidia.com/gpu" in msg or "Insufficient" in msg, msg
    [pod] = _pods(kube_api, kube_namespace)
    assert pod.status.phase == "Pending"
    time.sleep(3)  # several scheduler passes later, still one event
    assert len(unschedulable()) == 1
    assert srv.client.fine_tuning.jobs.retrieve(job.id).status == "running"
    srv.client.fine_tuning.jobs.cancel(job.id)
    _wait(lambda: not _jobs(kube_api, kube_namespace), 30, "the Job deleted")


def test_image_pull_error_and_failed_pod_creation_become_events(k8s_server, kube_api, kube_namespace):  # noqa: F811
    srv = k8s_server(k8s_trainer_image="registry.invalid/does-not-exist:1")
    f = srv.client.files.create(file=("train.jsonl", chat_lines(12)), purpose="fine-tune")
    job = srv.client.fine_tuning.jobs.create(model=TINY, training_file=f.id)

    def pull_errors() -> list[str]:
        return [m for m in srv.events(job.id) if "cannot start its container" in m]

    [msg] = _wait(pull_errors, 60, "an image pull event")
    # The event carries whichever reason the scheduler saw first; a kubelet alternates the two.
    assert ("ErrImagePull" in msg or "ImagePullBackOff" in msg) and "does-not-exist" in msg, msg
    time.sleep(3)  # ErrImagePull and ImagePullBackOff alternate meanwhile: still one event
    assert len(pull_errors()) == 1
    srv.client.fine_tuning.jobs.cancel(job.id)

    # A priority class that does not exist: the Job controller cannot create the pod at all.
    other = k8s_server(k8s_priority_class="no-such-class", data_dir=srv.settings.data_dir.parent / "other")
    f = other.client.files.create(file=("train.jsonl", chat_lines(12)), purpose="fine-tune")
    job = other.client.fine_tuning.jobs.create(model=TINY, training_file=f.id)
    [msg] = _wait(
        lambda: [m for m in other.events(job.id) if "cannot create the trainer pod" in m], 60, "a FailedCreate event"
    )
    assert "no-such-class" in msg
    other.client.fine_tuning.jobs.cancel(job.id)
    _wait(lambda: not _jobs(kube_api, kube_namespace), 30, "Jobs deleted")


def test_pod_killed_mid_run_fails_the_job_with_an_event(k8s_server, kube_api, kube_namespace, kubelet):  # noqa: F811
    srv = k8s_server(max_run_retries=0)  # no restart (crash-resume: test_killed_pod_resumes_from_its_checkpoint)
    job = _long_job(srv)
    _wait_metrics(srv, job.id)
    [pod] = _pods(kube_api, kube_namespace)
    assert kubelet.kill(kube_namespace, pod.metadata.name)

    failed = srv.wait_job(job.id, {"failed", "succeeded", "cancelled"}, timeout=60)
    assert failed.status == "failed"
    assert "137" in failed.error.message, failed.error
    events = srv.events(job.id)
    assert any(f"Pod {pod.metadata.name} failed" in m and "killed by signal 9" in m for m in events), events
    assert any(m.startswith("The trainer stopped unexpectedly") for m in events), events
    # The crashed run's Job is removed (its controller must not start a fresh pod).
    _wait(lambda: not _jobs(kube_api, kube_namespace), 30, "the crashed run's Job deleted")


def test_deleted_pod_is_a_crash(k8s_server, kube_api, kube_namespace):  # noqa: F811
    srv = k8s_server(max_run_retries=0)
    job = _long_job(srv)
    _wait_metrics(srv, job.id)
    [pod] = _pods(kube_api, kube_namespace)
    client.CoreV1Api(kube_api).delete_namespaced_pod(pod.metadata.name, kube_namespace)

    failed = srv.wait_job(job.id, {"failed", "succeeded", "cancelled"}, timeout=60)
    assert failed.status == "failed", srv.events(job.id)
    assert pod.metadata.name in failed.error.message
    assert any(m.startswith("The trainer stopped unexpectedly") for m in srv.events(job.id))
    _wait(lambda: not _jobs(kube_api, kube_namespace), 30, "the crashed run's Job deleted")


def test_killed_pod_resumes_from_its_checkpoint(k8s_server, kube_api, kube_namespace, kubelet):  # noqa: F811
    from tunery.resume import latest_state

    srv = k8s_server(k8s_finished_job_ttl_seconds=0)  # finished Jobs are deleted as soon as they are taken in
    f = srv.client.files.create(file=("train.jsonl", chat_lines(12)), purpose="fine-tune")
    job = srv.client.fine_tuning.jobs.create(
        model=TINY, training_file=f.id, hyperparameters={"n_epochs": 3, "batch_size": 1}
    )  # 36 steps, checkpoints at 12, 24 and 36
    store = srv.app.state.ctx.store
    _wait(lambda: latest_state(store, f"jobs/{job.id}") is not None, 240, f"a resume state: {srv.events(job.id)}")
    [pod] = _pods(kube_api, kube_namespace)
    assert kubelet.kill(kube_namespace, pod.metadata.name)

    done = srv.wait_job(job.id, {"failed", "succeeded", "cancelled"}, timeout=300)
    events = srv.events(job.id)
    assert done.status == "succeeded", events
    [restart] = [m for m in events if m.startswith("The trainer stopped unexpectedly")]
    assert "(exit code 137); restarting from checkpoint step" in restart, restart
    assert restart.endswith("(attempt 2 of 4)"), restart
    assert any(m.startswith("Resuming from the checkpoint at step") for m in events), events
    # The scheduler's sweep deleted the finished Job and its pod; the job keeps its outcome.
    _wait(lambda: not _jobs(kube_api, kube_namespace) and not _pods(kube_api, kube_namespace), 60,
          lambda: _state(kube_api, kube_namespace))  # fmt: skip
    assert srv.client.fine_tuning.jobs.retrieve(job.id).status == "succeeded"
    metrics = srv.http.get("/metrics").text
    assert 'tunery_scheduler_run_restarts_total{reason="crash"} 1.0' in metrics
    counts = {n: float(v) for n, v in re.findall(r"^(tunery_scheduler_runs_\w+_total) (\S+)$", metrics, re.M)}
    assert counts["tunery_scheduler_runs_started_total"] == 2.0, counts
    # The killed run's Job and the finished one: each swept once, by the pass that found it finished and unrecorded
    # (the killed one may already be gone by then, with its pod: Kubernetes' own garbage collection can be first).
    assert counts["tunery_scheduler_runs_swept_total"] in (1.0, 2.0), counts


def test_restarted_scheduler_adopts_the_running_job(k8s_server, kube_api, kube_namespace, tmp_path):  # noqa: F811
    grpc_port = free_port()  # the trainer keeps reporting to the same address across the restart
    srv = k8s_server(data_dir=tmp_path / "state", grpc_port=grpc_port)
    f = srv.client.files.create(file=("train.jsonl", chat_lines(40)), purpose="fine-tune")
    job = srv.client.fine_tuning.jobs.create(
        model=TINY, training_file=f.id, hyperparameters={"n_epochs": 2, "batch_size": 2}
    )
    _wait_metrics(srv, job.id)
    [before] = _jobs(kube_api, kube_namespace)
    srv.stop()
    assert [j.metadata.uid for j in _jobs(kube_api, kube_namespace)] == [before.metadata.uid]  # the run outlives it

    again = k8s_server(data_dir=tmp_path / "state", grpc_port=grpc_port)
    done = again.wait_job(job.id, {"succeeded", "failed", "cancelled"}, timeout=300)
    events = again.events(job.id)
    assert done.status == "succeeded", events
    assert "The scheduler restarted and adopted the running trainer run" in events
    assert not any("queued again" in m for m in events)
    # Adopted, not launched again: still the one Job.
    assert [j.metadata.uid for j in _jobs(kube_api, kube_namespace)] == [before.metadata.uid]


def test_multi_node_is_refused_on_a_server_without_indexed_jobs(k8s_server, kube_api, kube_namespace):  # noqa: F811
    srv = k8s_server(k8s_nodes_per_job=2)
    f = srv.client.files.create(file=("train.jsonl", chat_lines(12)), purpose="fine-tune")
    job = srv.client.fine_tuning.jobs.create(model=TINY, training_file=f.id)
    failed = srv.wait_job(job.id, {"failed", "succeeded"}, timeout=60)
    assert failed.status == "failed" and failed.error.code == "unsupported_cluster"
    assert "Indexed Jobs" in failed.error.message and "1.20" in failed.error.message
    assert not _jobs(kube_api, kube_namespace)


def test_no_trainer_image_fails_the_job_clearly(k8s_server, kube_api, kube_namespace):  # noqa: F811
    srv = k8s_server(k8s_trainer_image="")
    f = srv.client.files.create(file=("train.jsonl", chat_lines(12)), purpose="fine-tune")
    job = srv.client.fine_tuning.jobs.create(model=TINY, training_file=f.id)
    failed = srv.wait_job(job.id, {"failed", "succeeded"}, timeout=60)
    assert failed.status == "failed" and "TUNERY_K8S_TRAINER_IMAGE" in failed.error.message
    assert not _jobs(kube_api, kube_namespace)


def test_quota_refuses_a_job_that_can_never_fit(k8s_server, kube_api, kube_namespace):  # noqa: F811
    srv = k8s_server(k8s_gpus_per_job=2, project_gpu_quota=1)
    f = srv.client.files.create(file=("train.jsonl", chat_lines(12)), purpose="fine-tune")
    job = srv.client.fine_tuning.jobs.create(model=TINY, training_file=f.id)
    failed = srv.wait_job(job.id, {"failed", "succeeded"}, timeout=60)
    assert failed.status == "failed" and failed.error.code == "quota_exceeded"
    assert not _jobs(kube_api, kube_namespace)  # refused before any Job was created


def test_project_concurrency_limit_keeps_the_second_job_queued(k8s_server, kube_api, kube_namespace):  # noqa: F811
    srv = k8s_server(project_max_concurrent_jobs=1)
    first = _long_job(srv)
    second = _long_job(srv)
    _wait(lambda: srv.client.fine_tuning.jobs.retrieve(first.id).status == "running", 60, "first running")
    _wait(lambda: any("Waiting for a free slot" in m for m in srv.events(second.id)), 60, "the second job's wait event")
    assert srv.client.fine_tuning.jobs.retrieve(second.id).status == "queued"
    assert len(_jobs(kube_api, kube_namespace)) == 1
    srv.client.fine_tuning.jobs.cancel(first.id)
    _wait(lambda: srv.client.fine_tuning.jobs.retrieve(second.id).status == "running", 60, "second launched")
    srv.client.fine_tuning.jobs.cancel(second.id)
    _wait(lambda: not _jobs(kube_api, kube_namespace), 30, "Jobs deleted")


def test_a_queued_job_keeps_the_runtime_it_was_queued_with(k8s_server, kube_api, kube_namespace):  # noqa: F811
    """A job queued while the trainer image was A runs with A after the settings say B; one queued after, with B."""
    srv = k8s_server(project_max_concurrent_jobs=1)
    first = _long_job(srv)
    second = _long_job(srv)
    _wait(lambda: any("Waiting for a free slot" in m for m in srv.events(second.id)), 60, "the second job's wait event")
    srv.settings.k8s_trainer_image = "tunery/trainer:v2"
    third = _long_job(srv)
    _wait(lambda: srv.client.fine_tuning.jobs.retrieve(third.id).status == "queued", 60, "third queued")

    def image_of(job_id: str) -> str:
        [job] = [j for j in _jobs(kube_api, kube_namespace) if j.metadata.labels[LABEL_JOB] == job_id]
        return job.spec.template.spec.containers[0].image

    for done, started, image in ((first, second, "tunery/trainer:test"), (second, third, "tunery/trainer:v2")):
        srv.client.fine_tuning.jobs.cancel(done.id)
        _wait(lambda started=started: srv.client.fine_tuning.jobs.retrieve(started.id).status == "running", 60, "next")
        _wait(lambda started=started: any(
            j.metadata.labels[LABEL_JOB] == started.id for j in _jobs(kube_api, kube_namespace)
        ), 30, "its Job")  # fmt: skip
        assert image_of(started.id) == image
    srv.client.fine_tuning.jobs.cancel(third.id)
    _wait(lambda: not _jobs(kube_api, kube_namespace), 30, "Jobs deleted")


def test_full_manifest_passes_the_live_servers_validation(kube_api, kube_namespace):  # noqa: F811
    sched = client.SchedulingV1Api(kube_api)
    try:
        sched.create_priority_class(
            client.V1PriorityClass(metadata=client.V1ObjectMeta(name="tunery-training"), value=1000)
        )
    except client.ApiException as e:
        assert e.status == 409
    settings = Settings(
        k8s_trainer_image="registry.example.com/tunery/trainer:1.0",
        k8s_service_account="default",
        k8s_node_selector={"pool": "gpu"},
        k8s_tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        k8s_priority_class="tunery-training",
        k8s_credentials_secret="tunery-s3",
        k8s_gpus_per_job=4,
        k8s_cpu_request="8",
        k8s_memory_request="64Gi",
    )
    m = job_manifest(settings, job_id="ftjob-Dry", run="r1", spec_ref="s3://b#jobs/ftjob-Dry/spec.json",
                     namespace=kube_namespace)  # fmt: skip
    created = client.BatchV1Api(kube_api).create_namespaced_job(kube_namespace, m, dry_run="All")
    pod = created.spec.template.spec
    assert pod.priority_class_name == "tunery-training" and pod.tolerations[0].key == "nvidia.com/gpu"
    threads = {e.name: e.value_from.resource_field_ref for e in pod.containers[0].env if e.name.endswith("THREADS")}
    assert threads["OMP_NUM_THREADS"].resource == "requests.cpu"  # the API server takes the downward reference
    assert created.spec.backoff_limit == 0
    assert not _jobs(kube_api, kube_namespace)  # a dry run creates nothing


def test_leader_election_through_a_lease(kube_api, kube_namespace):  # noqa: F811
    from scheduler.leader import LEASE_NAME, LeaderElector

    a = LeaderElector(kube_api, kube_namespace, identity="a", lease_seconds=2)
    b = LeaderElector(kube_api, kube_namespace, identity="b", lease_seconds=2)
    assert a.try_acquire_or_renew() and a.is_leader()
    assert not b.try_acquire_or_renew() and not b.is_leader()
    assert a.try_acquire_or_renew()  # renewal
    lease = client.CoordinationV1Api(kube_api).read_namespaced_lease(LEASE_NAME, kube_namespace)
    assert lease.spec.holder_identity == "a"
    a.release()  # a clean shutdown hands over at once
    assert not a.is_leader()
    assert b.try_acquire_or_renew() and b.is_leader()
    # b stops renewing: once its Lease has expired, a takes over (and b, asking again, learns it lost).
    time.sleep(2.5)
    assert a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew() and not b.is_leader()
    lease = client.CoordinationV1Api(kube_api).read_namespaced_lease(LEASE_NAME, kube_namespace)
    assert lease.spec.holder_identity == "a" and lease.spec.lease_transitions == 2


def test_scheduler_replicas_elect_a_leader_and_hand_over_a_running_job(
    kube_cluster,  # noqa: F811
    kube_api,  # noqa: F811
    kube_namespace,  # noqa: F811
    kubelet,  # noqa: F811
    tiny_model_dir,
    tmp_path,
):
    """`--role api` + two `--role scheduler` replicas with leader election: only the leader launches; when it
    stops, the other takes the Lease over and adopts the running Job, which finishes."""
    from fastapi.testclient import TestClient
    from openai import OpenAI

    from api.server import build

    settings = Settings(
        data_dir=tmp_path / "state",
        base_models={TINY: str(tiny_model_dir)},
        demo_model=False,
        model_cache_dir=tmp_path / "cache",
        trainer_device="cpu",
        scheduler_poll_seconds=0.2,
        cancel_grace_seconds=3,
        scheduler_backend="kubernetes",
        scheduler_leader_election=True,
        scheduler_leader_lease_seconds=3,
        scheduler_lease_seconds=3,  # the run claims of a replica that stopped lapse as fast
        k8s_kubeconfig=str(kube_cluster.kubeconfig),
        k8s_namespace=kube_namespace,
        k8s_trainer_image="tunery/trainer:test",
        k8s_trainer_command=[sys.executable, "-m", "trainer"],
        # Both replicas serve the reporting service on one port (SO_REUSEPORT), as a Service would.
        grpc_port=free_port(),
        api_keys=["k"],  # the api role refuses to start without keys (the SDK below sends "k")
    )
    stops = []
    try:
        api_app, stop = build(settings, role="api")
        stops.append(stop)
        sdk = OpenAI(base_url="http://testserver/v1", api_key="k", http_client=TestClient(api_app), max_retries=0)
        first_app, stop_first = build(settings, role="scheduler")
        stops.append(stop_first)
        first = TestClient(first_app)
        _wait(lambda: first.get("/healthz").json()["leader"], 30, "the first replica leading")
        second_app, stop_second = build(settings, role="scheduler")
        stops.append(stop_second)
        second = TestClient(second_app)
        time.sleep(1.5)  # a few election rounds: the Lease is held
        assert second.get("/healthz").json() == {"status": "ok", "leader": False}

        f = sdk.files.create(file=("train.jsonl", chat_lines(40)), purpose="fine-tune")
        job = sdk.fine_tuning.jobs.create(
            model=TINY, training_file=f.id, hyperparameters={"n_epochs": 2, "batch_size": 2}
        )
        _wait(
            lambda: any(e.type == "metrics" for e in sdk.fine_tuning.jobs.list_events(job.id, limit=10).data),
            180,
            "a metrics event",
        )
        [kjob] = _jobs(kube_api, kube_namespace)

        stop_first()  # gives the Lease up
        stops.remove(stop_first)
        _wait(lambda: second.get("/healthz").json()["leader"], 30, "the second replica leading")
        deadline = time.monotonic() + 300
        while (status := sdk.fine_tuning.jobs.retrieve(job.id).status) not in ("succeeded", "failed", "cancelled"):
            assert time.monotonic() < deadline, status
            time.sleep(0.3)
        events = [e.message for e in sdk.fine_tuning.jobs.list_events(job.id, limit=200).data]
        assert status == "succeeded", events
        assert "The scheduler restarted and adopted the running trainer run" in events
        assert [j.metadata.uid for j in _jobs(kube_api, kube_namespace)] == [kjob.metadata.uid]
    finally:
        for stop in reversed(stops):
            stop()
