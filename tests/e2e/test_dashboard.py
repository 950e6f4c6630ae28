"""The dashboard in a real browser (Debian's chromium driven by Playwright) against the
local platform of `make dev`: sign-in with a good and a rejected key, a job created from
an upload (and an upload with a bad line), its loss curve growing until it succeeds, a
running job paused, resumed and cancelled from its page, the playground streaming from
the fine-tuned model, a batch's progress and output download, a read-only key that sees
no write buttons, and the API reference at /docs.

Every request the pages make to another origin is aborted and recorded, so each test
also shows the pages work offline (air-gapped clusters); a script error on any page
fails the test. With TUNEFORGE_SCREENSHOTS=<dir> (`make screenshots`) the main pages are
saved there as PNGs for docs/ and the README.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from kubernetes import client
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tuneforge import apikeys
from tuneforge.local.devstack import DevStack

from tests.support.devstack import batch_lines, final_job, json_training_rows, upload_jsonl, wait_for

CHROMIUM = os.environ.get("TUNEFORGE_CHROMIUM", "/usr/bin/chromium")
READ_ONLY_SCOPES = ["fine-tuning:read", "files:read", "batches:read", "models:read"]
SCREENSHOTS = os.environ.get("TUNEFORGE_SCREENSHOTS")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert Path(CHROMIUM).exists(), "the browser tests need Debian's chromium: `make provision-browser` installs it (README)"
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--headless=new"])
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def origin(dev_stack: DevStack) -> str:
    return f"http://127.0.0.1:{dev_stack.gateway_port}"


class Tab:
    """One browser tab on the gateway, with what it tried to fetch elsewhere and the
    script errors it raised."""

    def __init__(self, browser: Browser, origin: str) -> None:
        self.origin = origin
        self.context = browser.new_context(viewport={"width": 1280, "height": 860}, accept_downloads=True)
        self.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=origin)
        self.page: Page = self.context.new_page()
        self.elsewhere: list[str] = []
        self.script_errors: list[str] = []
        self.page.on("pageerror", lambda error: self.script_errors.append(str(error)))
        self.context.route(re.compile(r"^(?!" + re.escape(origin) + r"[/?#]|" + re.escape(origin) + r"$)"),
                           self._refuse)
        self.page.set_default_timeout(30_000)

    def _refuse(self, route) -> None:
        self.elsewhere.append(route.request.url)
        route.abort()

    def open(self, path: str) -> Page:
        self.page.goto(f"{self.origin}{path}")
        return self.page

    def sign_in(self, key: str) -> Page:
        """Signs in and, for a key the gateway accepts, waits for the dashboard: a test's next
        navigation then follows a finished sign-in, as a person's does."""
        self.open("/ui/")
        self.page.get_by_label("API key").fill(key)
        self.page.get_by_role("button", name="Sign in").click()
        expect(self.page.get_by_role("button", name="Sign out").or_(self.page.get_by_text("Sign-in failed"))).to_be_visible()
        return self.page

    def assert_controls_are_labelled(self) -> None:
        """Every field and button on the page has an accessible name (a label, aria-label
        or text), which is what screen readers announce and what these tests find them by."""
        unnamed = self.page.evaluate("""() => [...document.querySelectorAll('input, select, textarea, button, a')]
            .filter((el) => !((el.labels && [...el.labels].map((l) => l.textContent).join(''))
                              || el.getAttribute('aria-label') || el.textContent).trim())
            .map((el) => el.outerHTML.slice(0, 160))""")
        assert unnamed == [], f"controls without an accessible name: {unnamed}"

    def screenshot(self, name: str) -> None:
        if SCREENSHOTS:
            Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
            self.page.screenshot(path=str(Path(SCREENSHOTS) / f"{name}.png"))

    def close(self) -> None:
        self.context.close()
        assert self.script_errors == [], f"script errors: {self.script_errors}"
        assert self.elsewhere == [], f"the page fetched from other origins: {self.elsewhere}"


@pytest.fixture
def tab(browser: Browser, origin: str) -> Iterator[Tab]:
    opened = Tab(browser, origin)
    yield opened
    opened.close()


@pytest.fixture(scope="module")
def read_only_key(dev_stack: DevStack) -> str:
    """A key of the dev tenant that may read everything and change nothing, registered as
    `tuneforge keys create` registers one."""
    key = apikeys.generate_key()
    body = apikeys.key_secret(key, tenant=dev_stack.tenant, scopes=READ_ONLY_SCOPES, description="dashboard viewer")
    body["metadata"]["namespace"] = dev_stack.settings.system_namespace
    client.CoreV1Api(dev_stack.api_client).create_namespaced_secret(dev_stack.settings.system_namespace, body)
    return key


@pytest.fixture(scope="module")
def fine_tuned_model(openai_client: openai.OpenAI, model_id: str) -> str:
    """A fine-tuned model of the dev tenant: the newest one (the job test makes one through
    the dashboard), else one trained here through the API."""
    done = [j for j in openai_client.fine_tuning.jobs.list(limit=100) if j.status == "succeeded" and j.fine_tuned_model]
    if done:
        return done[0].fine_tuned_model
    training = upload_jsonl(openai_client, "viewer.jsonl", json_training_rows(8), "fine-tune")
    job = openai_client.fine_tuning.jobs.create(model=model_id, training_file=training,
                                                hyperparameters={"n_epochs": 1, "batch_size": 1})
    finished = final_job(openai_client, job.id)
    assert finished.status == "succeeded", finished.error
    return finished.fine_tuned_model


def jsonl(rows: list[dict]) -> bytes:
    return "\n".join(json.dumps(row) for row in rows).encode()


def test_a_rejected_key_stays_out_and_a_good_key_signs_in(tab: Tab, dev_stack: DevStack):
    page = tab.sign_in("sk-tf-not-a-real-key")
    expect(page.get_by_role("alert")).to_contain_text("Incorrect API key provided.")
    expect(page.get_by_role("navigation", name="Sections")).to_have_count(0)

    page.get_by_label("API key").fill(dev_stack.api_key)
    page.get_by_label("API key").press("Enter")  # the keyboard alone signs in
    expect(page.get_by_role("heading", name="Fine-tuning jobs")).to_be_visible()
    sections = page.get_by_role("navigation", name="Sections")
    for name in ("Jobs", "New job", "Batches", "Models", "Playground"):
        expect(sections.get_by_role("link", name=name, exact=True)).to_be_visible()
    expect(page.get_by_text(dev_stack.tenant, exact=False).first).to_be_visible()

    page.reload()  # the key lives in the tab's session: a reload stays signed in
    expect(page.get_by_role("heading", name="Fine-tuning jobs")).to_be_visible()
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_label("API key")).to_be_visible()


def test_an_upload_with_a_bad_line_is_refused_with_its_line_number(tab: Tab, dev_stack: DevStack):
    page = tab.sign_in(dev_stack.api_key)
    page.get_by_role("link", name="New job", exact=True).first.click()
    good = json.dumps(json_training_rows(1)[0])
    page.get_by_label("Training file", exact=True).set_input_files(
        {"name": "broken.jsonl", "mimeType": "application/jsonl", "buffer": f"{good}\n{{not json\n".encode()})
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("broken.jsonl is not a valid fine-tuning file")
    expect(alert).to_contain_text("line 2")
    expect(page.get_by_role("button", name="Start fine-tuning")).to_be_disabled()


def test_a_job_started_from_an_upload_draws_its_curve_and_succeeds(tab: Tab, dev_stack: DevStack, model_id: str):
    page = tab.sign_in(dev_stack.api_key)
    page.get_by_role("link", name="New job", exact=True).first.click()
    page.get_by_label("Training file", exact=True).set_input_files(
        {"name": "people.jsonl", "mimeType": "application/jsonl", "buffer": jsonl(json_training_rows(64))})
    expect(page.get_by_role("status").filter(has_text="people.jsonl")).to_contain_text("valid")
    expect(page.get_by_label("Base model")).to_have_value(model_id)
    page.get_by_label("Name").fill("dashboard people")
    page.get_by_label("Epochs").fill("4")
    page.get_by_label("Batch size").fill("1")
    expect(page.get_by_label("Estimate")).to_contain_text("minutes")
    tab.assert_controls_are_labelled()
    tab.screenshot("new-job")
    page.get_by_role("button", name="Start fine-tuning").click()

    expect(page).to_have_url(re.compile(r"#/jobs/ftjob-"))
    job_id = page.url.rsplit("/", 1)[1]
    expect(page.get_by_role("heading", name="dashboard people")).to_be_visible()
    loss = page.locator("figure.chart").filter(has_text="Loss")
    counts = []

    def points() -> int:
        value = int(loss.get_attribute("data-points") or 0)
        if not counts or counts[-1] != value:
            counts.append(value)
        return value

    wait_for("the loss curve's first points", lambda: points() > 0, timeout=240, every=0.25)
    first = counts[-1]
    status = page.locator(".title-row .badge")
    wait_for("the job to succeed in the page", lambda: (points(), status.inner_text() == "succeeded")[1],
             timeout=300, every=0.25)
    events = page.locator("ol.events")
    expect(events).to_contain_text(re.compile(r"Step (\d+)/\1\b"))
    total = int(re.search(r"Step (\d+)/\1\b", events.inner_text()).group(1))
    expect(loss).to_have_attribute("data-points", str(total))
    assert len(counts) >= 3 and first < total, f"the curve did not grow live: {counts} points of {total}"
    expect(page.get_by_label("Training progress")).to_have_attribute("value", "100")
    expect(page.get_by_role("button", name="Copy fine-tuned model id")).to_be_visible()
    model = page.locator(".copy code").inner_text()
    assert model.startswith("ft:") and job_id in model
    page.get_by_role("button", name="Copy fine-tuned model id").click()
    assert page.evaluate("navigator.clipboard.readText()") == model
    expect(page.get_by_role("button", name="Deploy")).to_be_visible()
    expect(page.get_by_role("button", name="Cancel job")).to_have_count(0)
    assert page.locator("table").last.locator("tbody tr").count() >= 1  # checkpoints
    tab.assert_controls_are_labelled()
    tab.screenshot("job")

    page.get_by_role("link", name="All jobs").click()
    row = page.locator("tbody tr").filter(has_text=job_id)
    expect(row).to_contain_text("completed")
    tab.assert_controls_are_labelled()
    tab.screenshot("jobs")
    page.get_by_label("Status").select_option("failed")
    page.get_by_label("Search").fill("dashboard people")
    expect(page.get_by_text("No job matches these filters.")).to_be_visible()


def test_a_running_job_pauses_resumes_and_cancels_from_its_page(tab: Tab, dev_stack: DevStack,
                                                                 openai_client: openai.OpenAI, model_id: str):
    training = upload_jsonl(openai_client, "long.jsonl", json_training_rows(16), "fine-tune")
    job = openai_client.fine_tuning.jobs.create(model=model_id, training_file=training,
                                                hyperparameters={"n_epochs": 50, "batch_size": 1})
    page = tab.sign_in(dev_stack.api_key)
    tab.open(f"/ui/#/jobs/{job.id}")
    status = page.locator(".title-row .badge")
    expect(status).to_have_text("running", timeout=240_000)
    actions = page.get_by_role("group", name="Job actions")
    actions.get_by_role("button", name="Pause").click()
    expect(status).to_have_text("paused", timeout=60_000)
    assert openai_client.fine_tuning.jobs.retrieve(job.id).status == "paused"
    expect(actions.get_by_role("button", name="Pause")).to_have_count(0)

    actions.get_by_role("button", name="Resume").click()
    expect(status).not_to_have_text("paused", timeout=60_000)
    assert openai_client.fine_tuning.jobs.retrieve(job.id).status != "paused"

    actions.get_by_role("button", name="Cancel job").click()
    actions.get_by_role("button", name="No").click()  # asked again, and kept
    expect(status).not_to_have_text("cancelled")
    actions.get_by_role("button", name="Cancel job").click()
    actions.get_by_role("button", name="Yes, cancel job").click()
    expect(status).to_have_text("cancelled", timeout=180_000)
    expect(page.get_by_role("group", name="Job actions").get_by_role("button")).to_have_count(0)
    assert openai_client.fine_tuning.jobs.retrieve(job.id).status == "cancelled"


def test_the_playground_streams_from_the_fine_tuned_model(tab: Tab, dev_stack: DevStack, fine_tuned_model: str):
    page = tab.sign_in(dev_stack.api_key)
    tab.open(f"/ui/#/playground?model={fine_tuned_model}")
    expect(page.get_by_label("Model")).to_have_value(fine_tuned_model)
    page.get_by_label("System prompt").fill("Answer with one JSON object only.")
    page.get_by_label("Max tokens").fill("24")
    page.evaluate("""() => {
        window.replyUpdates = 0;
        new MutationObserver(() => { window.replyUpdates += 1; })
            .observe(document.querySelector('ol.messages'), {subtree: true, characterData: true, childList: true});
    }""")
    page.get_by_label("Message").fill("Ada is 20 years old. Give name and age as JSON.")
    page.get_by_label("Message").press("Enter")
    expect(page.get_by_label("Last reply")).to_contain_text("completion tokens", timeout=240_000)
    reply = page.locator(".message.assistant .content").inner_text()
    assert reply.strip(), "no text streamed"
    assert page.evaluate("window.replyUpdates") > 3, "the reply appeared at once rather than streamed"
    expect(page.get_by_label("Last reply")).to_contain_text("first token")
    tab.assert_controls_are_labelled()
    tab.screenshot("playground")


def test_a_batch_shows_its_progress_and_its_output_downloads(tab: Tab, dev_stack: DevStack,
                                                             openai_client: openai.OpenAI, model_id: str):
    lines = batch_lines(model_id, 6, max_tokens=8)
    batch = openai_client.batches.create(input_file_id=upload_jsonl(openai_client, "ui-batch.jsonl", lines, "batch"),
                                         endpoint="/v1/chat/completions", completion_window="24h")
    page = tab.sign_in(dev_stack.api_key)
    page.get_by_role("link", name="Batches", exact=True).click()
    page.locator("tbody tr").filter(has_text=batch.id).get_by_role("link").click()
    expect(page.get_by_role("heading", name=batch.id)).to_be_visible()
    expect(page.locator(".request-counts")).to_contain_text("6 of 6 requests done: 6 completed, 0 failed",
                                                            timeout=240_000)
    expect(page.locator(".title-row .badge")).to_have_text("completed", timeout=60_000)
    expect(page.get_by_label("Requests done")).to_have_attribute("value", "100")
    tab.assert_controls_are_labelled()
    tab.screenshot("batch")
    with page.expect_download() as started:
        page.get_by_role("button", name="Download output").click()
    output = [json.loads(line) for line in Path(started.value.path()).read_text().splitlines()]
    assert sorted(o["custom_id"] for o in output) == sorted(line["custom_id"] for line in lines)
    assert all(o["response"]["status_code"] == 200 for o in output)


def test_models_page_lists_the_catalog_and_ready_deployments(tab: Tab, dev_stack: DevStack, model_id: str,
                                                             fine_tuned_model: str):
    page = tab.sign_in(dev_stack.api_key)
    page.get_by_role("link", name="Models", exact=True).click()
    expect(page.get_by_role("table", name="Base models")).to_contain_text(model_id)
    expect(page.get_by_role("table", name="Fine-tuned models")).to_contain_text(fine_tuned_model)
    deployments = page.get_by_role("table", name="Deployments")
    expect(deployments).to_contain_text("Ready")
    expect(deployments).to_contain_text(model_id)
    expect(page.get_by_role("link", name=f"Chat with {fine_tuned_model}")).to_be_visible()
    tab.assert_controls_are_labelled()
    tab.screenshot("models")


def test_a_read_only_key_sees_no_write_buttons(tab: Tab, read_only_key: str, openai_client: openai.OpenAI,
                                               fine_tuned_model: str):
    succeeded = next(j for j in openai_client.fine_tuning.jobs.list(limit=100) if j.fine_tuned_model == fine_tuned_model)
    page = tab.sign_in(read_only_key)
    expect(page.get_by_role("heading", name="Fine-tuning jobs")).to_be_visible()
    sections = page.get_by_role("navigation", name="Sections")
    expect(sections.get_by_role("link", name="Batches")).to_be_visible()
    for hidden in ("New job", "Playground"):
        expect(sections.get_by_role("link", name=hidden)).to_have_count(0)
    expect(page.get_by_role("link", name="New job")).to_have_count(0)
    page.locator("tbody tr").filter(has_text=succeeded.id).get_by_role("link").first.click()
    expect(page.locator(".title-row .badge")).to_have_text("succeeded")
    expect(page.locator("figure.chart").first).to_have_attribute("data-points", re.compile(r"[1-9]"))
    expect(page.get_by_role("group", name="Job actions")).to_have_count(0)
    for action in ("Deploy", "Cancel job", "Pause", "Restart"):
        expect(page.get_by_role("button", name=action)).to_have_count(0)
    expect(page.get_by_role("link", name="Chat with it")).to_have_count(0)
    tab.open("/ui/#/new")
    expect(page.get_by_text("This key cannot upload files and start jobs.")).to_be_visible()


def test_the_api_reference_renders_offline(tab: Tab):
    page = tab.open("/docs")
    operations = page.locator(".opblock")
    expect(operations.first).to_be_visible()
    assert operations.count() > 20
    expect(page.locator(".opblock-summary-path").filter(has_text=re.compile(r"^/v1/chat/completions$"))).to_have_count(1)
    expect(page.locator(".opblock-summary-path").filter(has_text="/api/v1/fine-tuning/jobs").first).to_be_visible()
    tab.screenshot("api-docs")
    page.get_by_role("button", name="Authorize").first.click()
    expect(page.get_by_text("HTTPBearer", exact=False).first).to_be_visible()
