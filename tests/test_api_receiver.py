"""POST /api/v1/webhook: every row of CONTRACT's table.

Each forge's delivery is built and signed in support.api. A delivery that should
start a sync goes to a real engine on a real remote, which polls only every 60 s,
so a link that flips was flipped by the webhook. A delivery that should be refused
or ignored goes to a FakeEngine (support.fake_engine), which records every trigger:
"no sync" is then `fake.engine.triggers == []`, known at once.
"""

from __future__ import annotations

import io
import json
from urllib.parse import urlencode

import pytest

from support.api import FORGES, FORGE_BY_NAME, SECRET, Api, forge_params, new_delivery_id, settled
from support.fake_engine import FIRST_SHA, FakeApi
from support.repos import ZERO_SHA, git
from support.servers import SmartHttpServer
from support.waiting import wait_for

GITHUB = FORGE_BY_NAME["github"]


def assert_no_sync(fake: FakeApi) -> None:
    assert fake.engine.triggers == [], "no sync should have started"
    assert fake.engine.status().commit == FIRST_SHA


def assert_publishes(api: Api, sha: str, timeout: float = 30.0) -> None:
    wait_for(lambda: api.published() == sha, timeout, message=f"the link to flip to {sha[:7]}")


# -- valid push to the tracked ref: 202, a sync starts at once ------------------------------

@forge_params
def test_push_to_the_tracked_branch_answers_202_and_publishes(api, remote, forge):
    sha = remote.commit_and_push({"app/main.py": f"print('{forge.name}')\n"}, f"via {forge.name}")
    headers, body = forge.delivery("refs/heads/main", sha)

    answer = api.post_webhook(headers, body)

    assert answer.status_code == 202, answer.get_json()
    assert answer.get_json()["result"] == "sync started"
    assert answer.get_json()["forge"] == forge.name
    assert_publishes(api, sha)
    entry = wait_for(lambda: next((e for e in api.engine.status().history if e.commit == sha), None),
                     message="the publish in the history")
    assert entry.trigger == "webhook" and entry.result == "published"


@forge_params
def test_push_to_a_tracked_tag_answers_202(api_factory, remote, forge):
    remote.tag("v1")
    api = api_factory(remote.url, "--ref", "v1")
    wait_for(api.engine.is_ready)
    sha = remote.commit_and_push({"f": forge.name}, "v1 moves")
    git("tag", "-f", "v1", cwd=remote.work)   # move the tag to the new commit
    git("push", "--quiet", "--force", "origin", "refs/tags/v1", cwd=remote.work)

    answer = api.post_webhook(*forge.delivery("refs/tags/v1", sha))

    assert answer.status_code == 202, answer.get_json()
    assert_publishes(api, sha)


def test_the_payload_sha_is_only_a_hint(api, remote):
    """A webhook naming an older (or made-up) commit still publishes the ref's real head."""
    sha = remote.commit_and_push({"f": "newest"}, "newest")
    answer = api.post_webhook(*GITHUB.delivery("refs/heads/main", "ab" * 20))
    assert answer.status_code == 202
    assert_publishes(api, sha)


def test_github_form_encoded_delivery_is_accepted(api, remote):
    sha = remote.commit_and_push({"f": "form"}, "form delivery")
    document = json.dumps({"ref": "refs/heads/main", "after": sha}).encode()
    body = urlencode({"payload": document}).encode()
    headers = GITHUB.signed(body, "push")
    headers["Content-Type"] = "application/x-www-form-urlencoded"

    answer = api.post_webhook(headers, body)

    assert answer.status_code == 202, answer.get_json()
    assert_publishes(api, sha)


def test_a_burst_of_pushes_coalesces_into_few_syncs_ending_on_the_newest(api_factory, remote):
    with SmartHttpServer(remote.path.parent) as server:
        api = api_factory(server.url_for("repo.git"))
        wait_for(api.engine.is_ready, message="the first publish")
        before = api.sync_count()
        shas = [remote.commit_and_push({"f": str(n)}, f"burst {n}") for n in range(5)]
        # The remote answers nothing until every delivery is in: however slow the machine,
        # the burst meets one sync under way, as it would a real fetch over a network.
        server.hold()
        answers = []
        for sha in shas:
            for _ in range(4):   # forges retry and several hooks fire: 20 deliveries in all
                answers.append(api.post_webhook(*GITHUB.delivery("refs/heads/main", sha)).status_code)
            if sha == shas[0]:
                wait_for(lambda: api.engine.status().state == "syncing", message="the held sync")
        server.release()

        assert answers == [202] * 20
        assert_publishes(api, shas[-1])
        wait_for(lambda: api.engine.status().state == "idle", message="the engine to go idle")
        assert api.sync_count() - before <= 4, "20 deliveries should fold into a few syncs"


def test_pushes_that_interleave_with_deliveries_end_on_the_newest_commit(api, remote):
    last = None
    for n in range(6):
        last = remote.commit_and_push({"f": f"step {n}"}, f"step {n}")
        assert api.post_webhook(*GITHUB.delivery("refs/heads/main", last)).status_code == 202
    assert_publishes(api, last)


# -- ping/test events, other refs and deletions: 200 with a JSON reason; no sync --------------

def ignored(answer, forge_name: str) -> str:
    assert answer.status_code == 200, answer.get_json()
    data = answer.get_json()
    assert data["result"] == "ignored" and data["forge"] == forge_name
    assert data["reason"]
    return data["reason"]


@pytest.mark.parametrize("forge", [f for f in FORGES if f.ping_event], ids=lambda f: f.name)
def test_ping_events_answer_200_with_a_reason_and_no_sync(fake, forge):
    body = json.dumps({"zen": "Keep it logically awesome.", "hook_id": 1}).encode()

    reason = ignored(fake.post_webhook(forge.signed(body, forge.ping_event), body), forge.name)

    assert "nothing to sync" in reason
    assert_no_sync(fake)


@forge_params
def test_events_that_are_not_pushes_answer_200_and_no_sync(fake, forge):
    body = json.dumps({"action": "opened", "eventType": forge.other_event}).encode()
    reason = ignored(fake.post_webhook(forge.signed(body, forge.other_event), body), forge.name)
    assert "not a push" in reason
    assert_no_sync(fake)


@forge_params
def test_a_push_to_another_branch_answers_200_and_no_sync(fake, forge):
    reason = ignored(fake.post_webhook(*forge.delivery("refs/heads/feature", "ab" * 20)), forge.name)

    assert "refs/heads/feature" in reason and "refs/heads/main" in reason
    assert_no_sync(fake)


@forge_params
def test_a_tag_push_answers_200_when_a_branch_is_tracked(fake, forge):
    answer = fake.post_webhook(*forge.delivery("refs/tags/v9", "cd" * 20))
    assert "refs/tags/v9" in ignored(answer, forge.name)
    assert_no_sync(fake)


@forge_params
def test_deleting_the_tracked_ref_answers_200_and_keeps_the_published_commit(fake, forge):
    reason = ignored(fake.post_webhook(*forge.delivery("refs/heads/main", ZERO_SHA)), forge.name)

    assert "deleted" in reason
    assert_no_sync(fake)


def test_a_push_to_another_branch_is_ignored_when_a_named_branch_is_tracked(api_factory, remote):
    remote.switch("release", create=True)
    remote.commit_and_push({"f": "release"}, "release", branch="release")
    api = api_factory(remote.url, "--ref", "release")
    wait_for(api.engine.is_ready)
    before = api.sync_count()

    assert api.post_webhook(*GITHUB.delivery("refs/heads/main", "ab" * 20)).status_code == 200
    assert settled(api, before)
    sha = remote.commit_and_push({"f": "release 2"}, "release 2", branch="release")
    assert api.post_webhook(*GITHUB.delivery("refs/heads/release", sha)).status_code == 202
    assert_publishes(api, sha)


# -- a delivery id seen before: 200, no second sync --------------------------------------------

@forge_params
def test_a_redelivered_id_answers_200_and_does_not_sync_again(api, remote, forge):
    first = remote.commit_and_push({"f": "first"}, "first")
    delivery_id = new_delivery_id()
    headers, body = forge.delivery("refs/heads/main", first, delivery_id=delivery_id)
    assert api.post_webhook(headers, body).status_code == 202
    assert_publishes(api, first)
    wait_for(lambda: api.engine.status().state == "idle")
    remote.commit_and_push({"f": "second"}, "second")   # a second sync would publish this
    before = api.sync_count()

    answer = api.post_webhook(headers, body)

    assert "duplicate delivery" in ignored(answer, forge.name)
    assert settled(api, before)
    assert api.published() == first


def test_the_last_thousand_delivery_ids_are_remembered(fake):
    body = json.dumps({"zen": "ping"}).encode()
    first = GITHUB.signed(body, "ping", delivery_id="the-first-id")
    assert "nothing to sync" in ignored(fake.post_webhook(first, body), "github")
    for n in range(999):
        fake.post_webhook(GITHUB.signed(body, "ping", delivery_id=f"later-{n}"), body)

    assert "duplicate" in ignored(fake.post_webhook(first, body), "github")


# -- missing or wrong signature or token: 401, no sync, nothing about the secret --------------

WRONG = b"not-the-receiver-secret"


def strip_signatures(headers: dict[str, str]) -> dict[str, str]:
    proofs = ("signature", "token", "authorization")
    return {k: v for k, v in headers.items() if not any(p in k.lower() for p in proofs)}


def assert_unauthorized(fake: FakeApi, answer) -> None:
    assert answer.status_code == 401
    assert answer.get_json() == {"error": "missing or invalid webhook signature or token"}
    assert SECRET not in answer.data and WRONG not in answer.data
    assert_no_sync(fake)


@forge_params
def test_a_wrong_signature_or_token_answers_401_and_does_not_sync(fake, forge):
    headers, body = forge.delivery("refs/heads/main", "ab" * 20, secret=WRONG)
    assert_unauthorized(fake, fake.post_webhook(headers, body))


@forge_params
def test_a_missing_signature_or_token_answers_401(fake, forge):
    headers, body = forge.delivery("refs/heads/main", "ab" * 20)
    assert_unauthorized(fake, fake.post_webhook(strip_signatures(headers), body))


BODY_SIGNERS = [forge for forge in FORGES if forge.name not in ("gitlab", "azure-devops")]


@pytest.mark.parametrize("forge", BODY_SIGNERS, ids=lambda forge: forge.name)
def test_a_body_changed_after_signing_answers_401(fake, forge):
    headers, body = forge.delivery("refs/heads/main", "ab" * 20)
    tampered = body[:-1] + b', "extra": 1}'
    assert_unauthorized(fake, fake.post_webhook(headers, tampered))


def test_a_request_from_no_known_forge_answers_401(fake):
    body = json.dumps({"ref": "refs/heads/main"}).encode()
    answer = fake.post_webhook({"Content-Type": "application/json"}, body)
    assert answer.status_code == 401
    assert SECRET not in answer.data
    assert_no_sync(fake)


def test_github_sha1_signature_alone_is_not_enough(fake):
    headers, body = GITHUB.delivery("refs/heads/main", "ab" * 20)
    del headers["X-Hub-Signature-256"]
    assert fake.post_webhook(headers, body).status_code == 401
    assert_no_sync(fake)


# -- body over the cap: 413 ------------------------------------------------------------------------

def test_a_body_over_the_cap_answers_413(fake_api):
    fake = fake_api("--receiver-max-body", "1KiB")
    body = json.dumps({"ref": "refs/heads/main", "pad": "x" * 2000}).encode()
    answer = fake.post_webhook(GITHUB.signed(body, "push"), body)
    assert answer.status_code == 413
    assert "larger" in answer.get_json()["error"]
    assert_no_sync(fake)


def test_a_body_at_the_cap_is_read(fake_api):
    fake = fake_api("--receiver-max-body", "1KiB")
    document = json.dumps({"ref": "refs/heads/main", "after": "ab" * 20, "pad": ""})
    body = document.replace('"pad": ""', '"pad": "' + "x" * (1024 - len(document)) + '"').encode()
    assert len(body) == 1024
    assert fake.post_webhook(GITHUB.signed(body, "push"), body).status_code == 202
    assert fake.engine.triggers == ["webhook"]


def test_the_default_cap_is_five_mebibytes(fake):
    body = b" " * (5 * 1024 * 1024 + 1)
    assert fake.post_webhook(GITHUB.signed(body, "push"), body).status_code == 413
    body = b"{}" + b" " * (5 * 1024 * 1024 - 2)
    assert fake.post_webhook(GITHUB.signed(body, "push"), body).status_code == 400
    assert_no_sync(fake)


def test_a_chunked_body_over_the_cap_answers_413(fake_api):
    fake = fake_api("--receiver-max-body", "1KiB")

    answer = fake.client.post("/api/v1/webhook", input_stream=io.BytesIO(b"x" * 5000),
                              headers={"X-GitHub-Event": "push", "Transfer-Encoding": "chunked"},
                              environ_overrides={"wsgi.input_terminated": True})   # as waitress says
    assert answer.status_code == 413
    assert_no_sync(fake)


# -- signed but malformed body: 400 ---------------------------------------------------------------

MALFORMED = {
    "not JSON": b"{this is not json",
    "a JSON list": b"[1, 2, 3]",
    "no ref": json.dumps({"after": "ab" * 20}).encode(),
    "not UTF-8": b'{"ref": "\xff\xfe"}',
}


@forge_params
@pytest.mark.parametrize("shape", MALFORMED, ids=list(MALFORMED))
def test_a_signed_but_malformed_push_answers_400(fake, forge, shape):
    body = MALFORMED[shape]
    answer = fake.post_webhook(forge.signed(body, forge.push_event), body)
    assert answer.status_code == 400, answer.get_json()
    assert answer.get_json()["error"]
    assert_no_sync(fake)


def test_a_signed_form_delivery_without_a_payload_answers_400(fake):
    body = b"something=else"
    headers = GITHUB.signed(body, "push")
    headers["Content-Type"] = "application/x-www-form-urlencoded"
    assert fake.post_webhook(headers, body).status_code == 400
    assert_no_sync(fake)


# -- no receiver secret: 404; only POST --------------------------------------------------------------

def test_without_a_receiver_secret_the_endpoint_answers_404(fake_api):
    fake = fake_api(env={"GITSYNC_RECEIVER_SECRET": None})
    headers, body = GITHUB.delivery("refs/heads/main", "ab" * 20)
    answer = fake.post_webhook(headers, body)
    assert answer.status_code == 404
    assert "no receiver secret" in answer.get_json()["error"]
    assert_no_sync(fake)


def test_the_secret_can_come_from_a_file(api_factory, remote, tmp_path):
    secret_file = tmp_path / "receiver-secret"
    secret_file.write_bytes(b"from-a-file\n")
    api = api_factory(remote.url, "--receiver-secret-file", str(secret_file),
                      env={"GITSYNC_RECEIVER_SECRET": None})
    wait_for(api.engine.is_ready)
    sha = remote.commit_and_push({"f": "file"}, "file")
    assert api.post_webhook(*GITHUB.delivery("refs/heads/main", sha)).status_code == 401
    assert api.post_webhook(*GITHUB.delivery("refs/heads/main", sha, secret=b"from-a-file")).status_code == 202
    assert_publishes(api, sha)


def test_get_is_not_allowed(fake):
    answer = fake.client.get("/api/v1/webhook")
    assert answer.status_code == 405
    assert answer.is_json


# -- counted by forge and result ----------------------------------------------------------------------

def test_deliveries_are_counted_by_forge_and_result(fake):
    sha = "ef" * 20
    gitlab = FORGE_BY_NAME["gitlab"]
    fake.post_webhook(*gitlab.delivery("refs/heads/main", sha))
    fake.post_webhook(*gitlab.delivery("refs/heads/other", sha))
    fake.post_webhook(*GITHUB.delivery("refs/heads/main", sha, secret=WRONG))
    metrics = fake.client.get("/metrics").get_data(as_text=True)
    assert 'gitsync_webhook_requests_total{forge="gitlab",result="sync"} 1.0' in metrics
    assert 'gitsync_webhook_requests_total{forge="gitlab",result="other_ref"} 1.0' in metrics
    assert 'gitsync_webhook_requests_total{forge="unknown",result="unauthorized"} 1.0' in metrics
    assert fake.engine.triggers == ["webhook"]
