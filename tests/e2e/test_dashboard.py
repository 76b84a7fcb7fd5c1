"""The web dashboard (docs/dashboard.md) in a real headless Chromium, against a real server on the tiny Llama: sign in
with a key (a wrong one shows the API's error), upload a training file through the page and read its validation
report, watch a real tiny training job's loss curve grow on its page (with a screenshot), cancel a job, find the
fine-tuned model with its lineage, chat with it beside its base model, and pause and resume a running job.

One server and one browser for the module (scope=module): the tests run in order and share the job they train."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.chromium import WIDTH, png_pixels, start_chromium, wait_for
from tests.conftest import TINY, RunningServer, chat_lines, start_server

pytestmark = pytest.mark.integration  # a real trainer run

KEY = "sk-dashboard-test-key-0123456789"
N_EXAMPLES, BATCH = 150, 1  # 150 steps of one epoch: the tiny model trains 20 steps a second on a quiet machine,
# and the page polls each second: enough polls to see the curve grow while it runs


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """One headless Chromium for the whole module (a start costs about a second)."""
    driver = start_chromium()
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@dataclass
class Shared:
    """What the module's tests hand on to each other."""

    srv: RunningServer
    tmp: Path
    file_id: str = ""
    job_id: str = ""
    queued_job_id: str = ""
    states: list[tuple[str, int]] = field(default_factory=list)


@pytest.fixture(scope="module")
def shared(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    tmp = tmp_path_factory.mktemp("dashboard")
    srv = start_server(
        tmp / "data",
        base_models={TINY: str(tiny_model_dir)},
        demo_model=False,
        model_cache_dir=tmp / "cache",
        api_keys=[KEY],
        max_concurrent_runs=1,
    )
    srv.client = srv.client.with_options(api_key=KEY)
    srv.http.headers["authorization"] = f"Bearer {KEY}"
    try:
        yield Shared(srv, tmp)
    finally:
        srv.stop()


def go(driver: Any, srv: RunningServer, hash_: str) -> None:
    driver.get(f"{srv.base_url}/dashboard/{hash_}")


def css(driver: Any, selector: str) -> Any:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, selector)


def all_css(driver: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return list(driver.find_elements(By.CSS_SELECTOR, selector))


def text_of(driver: Any, selector: str) -> str:
    return str(css(driver, selector).text)


def sign_in(driver: Any, key: str) -> None:
    field_ = wait_for(lambda: css(driver, "#api-key"), what="the key field")
    field_.clear()
    field_.send_keys(key)
    css(driver, "#login-button").click()


def severe_console_errors(driver: Any) -> list[str]:
    """The browser console's errors, but for the 401 the wrong key got (Chromium logs a failed fetch)."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE" and "401" not in e["message"]]


# ---- in the browser --------------------------------------------------------------------------------------------
def test_a_wrong_key_shows_the_error_and_the_right_key_signs_in(chromium: Any, shared: Shared) -> None:
    go(chromium, shared.srv, "#/jobs")
    wait_for(lambda: chromium.current_url.endswith("#/login"), what="the sign-in page")
    assert not css(chromium, "#nav").is_displayed()
    sign_in(chromium, "sk-wrong-key-0000000000000000")
    error = wait_for(lambda: text_of(chromium, "#login-error"), what="the wrong key's error")
    assert "Incorrect API key provided" in error and "sk-wro" in error
    assert chromium.current_url.endswith("#/login")
    sign_in(chromium, KEY)
    wait_for(lambda: chromium.current_url.endswith("#/jobs"), what="the jobs page after signing in")
    assert css(chromium, "#nav").is_displayed()
    assert chromium.execute_script("return sessionStorage.getItem('tunery.apiKey')") == KEY
    assert chromium.execute_script("return localStorage.getItem('tunery.apiKey')") is None  # not asked to remember
    assert wait_for(lambda: css(chromium, "#jobs-table").is_displayed())
    assert not severe_console_errors(chromium)  # the policy blocked nothing the page needs


def upload_through_the_page(driver: Any, path: Path) -> str:
    """Upload a file with the files page's form; its id, once the page shows the upload done."""
    if not driver.current_url.endswith("#/files"):
        css(driver, "a[data-nav=files]").click()
    wait_for(lambda: css(driver, "#file-input"), what="the upload form")
    css(driver, "#file-input").send_keys(str(path))
    css(driver, "#upload-button").click()
    link = wait_for(lambda: css(driver, "#upload-status a"), what="the upload's end")
    bar = css(driver, "#upload-progress")
    # the upload's progress events count the whole multipart body: the file and the form around it
    done, total = bar.get_attribute("value"), bar.get_attribute("max")
    assert done == total and int(total) > path.stat().st_size
    return str(link.text)


def test_a_file_uploaded_through_the_page_shows_its_validation_report(chromium: Any, shared: Shared) -> None:
    good = shared.tmp / "train.jsonl"
    good.write_bytes(chat_lines(N_EXAMPLES))
    shared.file_id = upload_through_the_page(chromium, good)
    uploaded = shared.srv.client.files.retrieve(shared.file_id)
    assert (uploaded.filename, uploaded.purpose, uploaded.bytes) == ("train.jsonl", "fine-tune", good.stat().st_size)
    assert wait_for(lambda: css(chromium, f"#files-table tr[data-file-id='{shared.file_id}']"), what="the file listed")
    report = wait_for(lambda: css(chromium, "#validation-report .report"), what="the validation report")
    expected = shared.srv.http.get(f"/v1/files/{shared.file_id}/validation").json()
    assert text_of(chromium, "#validation-report tr[data-key=format] td") == "chat (supervised)"
    assert text_of(chromium, "#validation-report tr[data-key=examples] td") == str(N_EXAMPLES)
    assert text_of(chromium, "#validation-report tr[data-key=total] td") == str(expected["tokens"]["total"])
    bars = all_css(chromium, "#token-histogram rect.bar")
    assert len(bars) == len(expected["tokens"]["histogram"]["counts"]) >= 1
    assert sum(int(b.get_attribute("data-count")) for b in bars) == N_EXAMPLES
    assert "processed" in report.text

    bad = shared.tmp / "broken.jsonl"
    bad.write_bytes(chat_lines(3) + b'{"messages": [{"role": "robot", "content": "x"}]}\n{not json\n')
    upload_through_the_page(chromium, bad)
    errors = wait_for(lambda: css(chromium, "#line-errors"), what="the line errors")
    rows = [r.text for r in all_css(chromium, "#line-errors tbody tr")]
    assert len(rows) == 2 and rows[0].startswith("4") and rows[1].startswith("5"), rows
    assert "Line errors (2)" in errors.text and "error" in text_of(chromium, "#validation-report h2")


def page_status(driver: Any) -> str:
    """The status the job page shows (once it has drawn the job)."""
    return str(wait_for(lambda: css(driver, "h1 .status").get_attribute("data-status"), what="the job's status"))


def attribute(driver: Any, selector: str, name: str) -> str | None:
    """An attribute of the element ``selector`` finds (None without one), found and read in one script: the page
    redraws its charts on each poll, so an element found by one WebDriver call may be gone by the next."""
    value = driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.getAttribute(arguments[1]) : null;",
        selector,
        name,
    )
    return None if value is None else str(value)


def points(driver: Any, series: str, chart: str = "loss-chart") -> int:
    """The points of a chart's ``series`` polyline (0 before it is drawn)."""
    count = attribute(driver, f"#{chart} polyline[data-series={series}]", "data-count")
    return int(count) if count is not None else 0


def test_a_job_page_draws_the_loss_curve_live(chromium: Any, shared: Shared) -> None:
    client = shared.srv.client
    file_id = shared.file_id or client.files.create(file=("t.jsonl", chat_lines(N_EXAMPLES)), purpose="fine-tune").id
    job = client.fine_tuning.jobs.create(
        model=TINY,
        training_file=file_id,
        suffix="dash",
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": BATCH}}},
    )
    shared.job_id = job.id
    # A second job waits behind it (one run at a time): the cancel test's.
    shared.queued_job_id = client.fine_tuning.jobs.create(model=TINY, training_file=file_id).id

    css(chromium, "a[data-nav=jobs]").click()
    row = wait_for(lambda: css(chromium, f"#jobs-table tr[data-job-id='{job.id}']"), what="the job in the list")
    assert TINY in row.text
    css(chromium, f"#jobs-table tr[data-job-id='{job.id}'] a").click()
    wait_for(lambda: chromium.current_url.endswith(f"#/jobs/{job.id}"), what="the job page")

    # Sample the page while the job trains: the train_loss polyline's points, with the status the page shows.
    deadline = time.monotonic() + 240
    shot: Path | None = None
    while time.monotonic() < deadline:
        st = page_status(chromium)
        n = points(chromium, "train_loss")
        shared.states.append((st, n))
        if st == "running" and n >= 2 and shot is None:
            assert css(chromium, "#pause-job").is_enabled() and not css(chromium, "#resume-job").is_enabled()
            shot = shared.tmp / "job-page.png"
            assert chromium.save_screenshot(str(shot))
        grown = {n for s, n in shared.states if s == "running" and n > 0}
        if st in ("succeeded", "failed", "cancelled") or (shot and len(grown) >= 2):
            break  # (a busy machine's trainer may report steps in bursts: one poll can see several new points)
        time.sleep(0.25)
    running = [n for st, n in shared.states if st == "running" and n > 0]
    assert running and max(running) > min(running), f"the curve never grew while the job ran: {shared.states}"
    assert shot is not None, shared.states

    pixels = png_pixels(shot)
    height, width, _ = pixels.shape
    assert (width, height) == (WIDTH, chromium.execute_script("return window.innerHeight")) and height > 600
    colours = {tuple(int(v) for v in px) for px in pixels[::7, ::7].reshape(-1, 3)}
    assert len(colours) > 50, "the screenshot is blank"
    r = css(chromium, "#loss-chart").rect
    box = pixels[int(r["y"]) : int(r["y"] + r["height"]), int(r["x"]) : int(r["x"] + r["width"])]
    blue = ((box[:, :, 2].astype(int) - box[:, :, 0].astype(int)) > 80).sum()  # the train_loss line (#1f5fbf)
    assert blue > 100, "no loss curve drawn in the screenshot"


def test_cancel_from_the_job_page(chromium: Any, shared: Shared) -> None:
    job_id = shared.queued_job_id
    go(chromium, shared.srv, f"#/jobs/{job_id}")
    button = wait_for(lambda: css(chromium, "#cancel-job"), what="the cancel button")
    wait_for(lambda: css(chromium, "#cancel-job").is_enabled(), what="cancel enabled")
    css(chromium, "#cancel-job").click()
    assert wait_for(lambda: "Really" in css(chromium, "#cancel-job").text)  # a second click confirms
    assert shared.srv.client.fine_tuning.jobs.retrieve(job_id).status != "cancelled"
    css(chromium, "#cancel-job").click()
    wait_for(lambda: page_status(chromium) == "cancelled", what="cancelled")
    assert shared.srv.client.fine_tuning.jobs.retrieve(job_id).status == "cancelled"
    wait_for(lambda: not css(chromium, "#cancel-job").is_enabled(), what="cancel disabled once cancelled")
    assert button is not None


def test_the_finished_job_shows_its_checkpoints_report_and_hyperparameters(chromium: Any, shared: Shared) -> None:
    job = shared.srv.wait_job(shared.job_id, {"succeeded", "failed", "cancelled"}, timeout=240)
    assert job.status == "succeeded", (job.error, shared.srv.events(job.id))
    go(chromium, shared.srv, f"#/jobs/{job.id}")
    wait_for(lambda: page_status(chromium) == "succeeded", what="succeeded")
    steps = N_EXAMPLES // BATCH
    wait_for(lambda: points(chromium, "train_loss") == steps, what="every step on the curve")
    assert points(chromium, "learning_rate", chart="lr-chart") == steps
    assert points(chromium, "tokens_per_second", chart="speed-chart") == steps
    assert attribute(chromium, "#job-progress-bar", "value") == str(steps)
    metrics = [
        e.data for e in shared.srv.client.fine_tuning.jobs.list_events(job.id, limit=100).data if e.type == "metrics"
    ]
    peak = max(m["peak_memory_gib"] for m in metrics)
    assert text_of(chromium, "#job-peak-memory") == f"· peak memory {peak:.2f} GiB"
    checkpoints = shared.srv.client.fine_tuning.jobs.checkpoints.list(job.id).data
    rows = wait_for(lambda: all_css(chromium, "#checkpoints-table tbody tr"), what="the checkpoints")
    assert [r.get_attribute("data-checkpoint-id") for r in rows] == [c.id for c in checkpoints]
    css(chromium, "#checkpoints-table button[data-checkpoint]").click()
    report = wait_for(lambda: css(chromium, "#eval-report .report"), what="the checkpoint's eval report")
    assert checkpoints[0].fine_tuned_model_checkpoint in report.text and "Forgetting on" in report.text
    assert text_of(chromium, "#hyperparameters table[data-group=hyperparameters] tr[data-key=n_epochs] td") == "1"
    assert text_of(chromium, "#hyperparameters table[data-group=hyperparameters] tr[data-key=batch_size] td") == str(
        BATCH
    )
    messages = [e.text for e in all_css(chromium, "#events li .message")]
    assert messages[0] == "The job has successfully completed" and f"Step {steps}/{steps}" in " ".join(messages)
    # the jobs list: done
    css(chromium, "a[data-nav=jobs]").click()
    done = wait_for(lambda: css(chromium, f"#jobs-table tr[data-job-id='{job.id}']"), what="the job's row")
    assert job.fine_tuned_model in done.text and "succeeded" in done.text


def test_the_models_page_lists_the_fine_tuned_model_with_its_lineage(chromium: Any, shared: Shared) -> None:
    job = shared.srv.client.fine_tuning.jobs.retrieve(shared.job_id)
    css(chromium, "a[data-nav=models]").click()
    row = wait_for(lambda: css(chromium, f"#models-table tr[data-model-id='{job.fine_tuned_model}']"), what="the model")
    assert row.get_attribute("data-kind") == "fine-tuned"
    lineage = row.find_element("css selector", ".lineage").text
    assert lineage.startswith(TINY) and job.id in lineage
    ckpt = f"{job.fine_tuned_model}:ckpt-step-{N_EXAMPLES // BATCH}"
    assert css(chromium, f"#models-table tr[data-model-id='{ckpt}']").get_attribute("data-kind") == "checkpoint"
    assert css(chromium, f"#models-table tr[data-model-id='{TINY}']").get_attribute("data-kind") == "base"


def test_the_playground_chats_with_a_model_beside_its_base(chromium: Any, shared: Shared) -> None:
    job = shared.srv.client.fine_tuning.jobs.retrieve(shared.job_id)
    row = css(chromium, f"#models-table tr[data-model-id='{job.fine_tuned_model}']")
    row.find_element("css selector", "a[href^='#/playground']").click()
    wait_for(lambda: css(chromium, "#model-select"), what="the playground")
    assert css(chromium, "#model-select").get_attribute("value") == job.fine_tuned_model
    assert css(chromium, "#base-select").get_attribute("value") == TINY  # the base it was tuned from
    css(chromium, "#max-tokens").clear()
    css(chromium, "#max-tokens").send_keys("4")
    css(chromium, "#prompt").send_keys("Question number 3?")
    css(chromium, "#send").click()
    for box in ("#chat-model", "#chat-base"):
        wait_for(lambda box=box: all_css(chromium, f"{box} .msg.assistant:not(.pending)"), 60, what=f"{box}'s reply")
        assert text_of(chromium, f"{box} .msg.user") == "Question number 3?"
        assert "tokens" in text_of(chromium, f"{box} .msg.assistant small")
    assert not severe_console_errors(chromium)


def test_pause_and_resume_a_running_job_from_its_page(chromium: Any, shared: Shared) -> None:
    """A job of 40 one-example steps, paused with the page's button while it trains and resumed with the other: the
    page follows it through paused and queued to succeeded, and the second run continues where the first stopped."""
    steps = 40
    client = shared.srv.client
    data = client.files.create(file=("pause.jsonl", chat_lines(steps)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model=TINY,
        training_file=data.id,
        seed=7,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 1}}},
        extra_body={"tunery": {"eval": {"enabled": False}}},
    )
    go(chromium, shared.srv, f"#/jobs/{job.id}")
    wait_for(
        lambda: page_status(chromium) == "running" and points(chromium, "train_loss") >= 2, 240, what="steps drawn"
    )
    assert not css(chromium, "#resume-job").is_enabled()
    css(chromium, "#pause-job").click()
    wait_for(lambda: page_status(chromium) == "paused", what="paused")
    assert client.fine_tuning.jobs.retrieve(job.id).status == "paused"
    assert not css(chromium, "#pause-job").is_enabled() and css(chromium, "#cancel-job").is_enabled()

    def messages() -> list[str]:
        return [e.text for e in all_css(chromium, "#events li .message")]

    stopped = wait_for(
        lambda: next((m for m in messages() if m.startswith("Fine-tuning job paused at step")), None),
        120,
        what="the run's pause event on the page",
    )
    paused_at = int(stopped.rsplit(" ", 1)[1])
    assert 2 <= paused_at < steps
    wait_for(lambda: css(chromium, "#resume-job").is_enabled(), what="resume enabled")
    css(chromium, "#resume-job").click()
    wait_for(lambda: page_status(chromium) != "paused", what="resumed")
    assert client.fine_tuning.jobs.retrieve(job.id).status in ("queued", "running", "succeeded")
    wait_for(lambda: page_status(chromium) == "succeeded", 300, what="the resumed job's end")
    resumed = f"Resuming from the checkpoint at step {paused_at}/{steps}"
    assert any(resumed in m for m in messages()), messages()
    wait_for(lambda: points(chromium, "train_loss") == steps, what="every step on the curve, once")
    events = client.fine_tuning.jobs.list_events(job.id, limit=1000).data
    assert sorted(e.data["step"] for e in events if e.type == "metrics") == list(range(1, steps + 1))
    assert not severe_console_errors(chromium)


def test_a_read_only_key_is_offered_no_write(chromium: Any, shared: Shared) -> None:
    """Signed in with a reader key of the same project, the pages show the same jobs and files, but no button or
    form that would only get a 403: no pause, resume or cancel, no upload, no delete. Signed in again as the admin,
    the buttons are back (the role is asked again for each sign-in)."""
    admin = {"authorization": f"Bearer {KEY}"}
    project = shared.srv.settings.project_id
    viewer = {"name": "viewer", "role": "reader"}
    made = shared.srv.http.post(f"/v1/organization/projects/{project}/service_accounts", json=viewer, headers=admin)
    assert made.status_code == 200, made.text
    reader = made.json()["api_key"]["value"]
    chromium.execute_script("sessionStorage.clear(); localStorage.clear();")
    go(chromium, shared.srv, f"#/jobs/{shared.queued_job_id}")
    sign_in(chromium, reader)
    wait_for(lambda: page_status(chromium) == "cancelled", what="the job's page, read")
    assert "Read-only" in wait_for(lambda: css(chromium, "#read-only"), what="the read-only note").text
    assert all_css(chromium, "#cancel-job, #pause-job, #resume-job") == []
    css(chromium, "a[data-nav=files]").click()
    wait_for(lambda: all_css(chromium, f"tr[data-file-id='{shared.file_id}']"), what="the files, listed")
    assert all_css(chromium, "#upload-form") == [] and css(chromium, "#read-only").is_displayed()
    assert [b for b in all_css(chromium, "#files-table button") if b.text == "Delete"] == []
    # The admin again: the same pages offer their actions.
    chromium.execute_script("sessionStorage.clear(); localStorage.clear();")
    go(chromium, shared.srv, f"#/jobs/{shared.queued_job_id}")
    sign_in(chromium, KEY)
    wait_for(lambda: all_css(chromium, "#cancel-job"), what="the job's buttons")
    assert all_css(chromium, "#read-only") == []
    assert not severe_console_errors(chromium)
