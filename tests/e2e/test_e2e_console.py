"""The web console in headless Chromium against real manager processes (tests/e2e/console_helpers.py).

Root signs in, creates a scheduler cluster through the form (after the form refuses a bad one), edits it, creates a
guest user and a token (shown once); the guest signs in and can read the cluster but not change it; root deletes
the cluster after confirming. The swarm view follows a real download by a seed peer and two peers. Screenshots
of each page land in the test's directory; no console errors allowed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from console_helpers import ROOT_PASSWORD, Browser, call, manager_config, nav, root_token, run_manager, sign_in
from swarm_helpers import MiB, describe, dfget_in_background, make_file, sha256_of

from dragonfly.cli.cluster import LocalCluster, OriginProcess
from dragonfly.cli.registry import RegistryProcess, build_multi_platform_image, push
from tests.waiting import wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def manager(module_dir: Path) -> Iterator[tuple[str, int]]:
    """One manager for the module's tests (REST base URL, gRPC port); each test makes and checks state of its own."""
    config = manager_config(module_dir / "manager")
    with run_manager(module_dir / "manager", config) as (_process, base):
        yield base, config["server"]["grpc"]["port"]["start"]


@pytest.fixture(scope="module")
def chromium(module_dir: Path) -> Iterator[Browser]:
    """One headless Chromium for the module's tests (starting one takes seconds)."""
    shared = Browser(module_dir / "screenshots")
    try:
        yield shared
    finally:
        shared.close()


@pytest.fixture
def browser(chromium: Browser, tmp_path: Path) -> Iterator[Browser]:
    """The module's Chromium for one test: its own pages, screenshots and console errors."""
    chromium.use(tmp_path / "screenshots")
    try:
        yield chromium
    finally:
        chromium.close_pages()
    assert chromium.errors == [], "console errors in the browser:\n" + "\n".join(chromium.errors)


def test_root_manages_a_cluster_a_guest_only_reads_it(manager: tuple[str, int], browser: Browser) -> None:
    from playwright.sync_api import expect

    base, _grpc_port = manager
    page = browser.page()
    # Unknown client-side routes get the app (SPA fallback), which sends a visitor to sign in.
    page.goto(base + "/scheduler-clusters")
    expect(page).to_have_url(re.compile(r"/signin$"))
    expect(page).to_have_title(re.compile("Sign in"))
    page.get_by_label("User name").fill("root")
    page.get_by_label("Password", exact=True).fill("wrong-password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_have_text("wrong user name or password")
    browser.screenshot(page, "signin")
    page.get_by_label("Password", exact=True).fill(ROOT_PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    # Back where the visitor wanted to go.
    page.get_by_role("heading", name="Scheduler clusters").wait_for()

    nav(page, "Overview")
    expect(page.get_by_test_id("count-Scheduler clusters")).to_have_text(re.compile(r"^\d+$"))
    browser.screenshot(page, "overview")

    # Create: the form names mistakes before anything is sent.
    nav(page, "Scheduler clusters")
    page.get_by_role("link", name="Create scheduler cluster").click()
    page.get_by_label("Name", exact=True).fill("east 1")
    page.get_by_label("CIDRs (comma separated)").fill("10.0.0.0")
    page.get_by_role("button", name="Create").click()
    problems = page.get_by_role("alert", name="Problems in the form")
    expect(problems).to_contain_text("Name: letters, digits")
    expect(problems).to_contain_text('CIDR "10.0.0.0" is not a CIDR.')
    browser.screenshot(page, "scheduler-cluster-create")
    page.get_by_label("Name", exact=True).fill("east-1")
    page.get_by_label("CIDRs (comma separated)").fill("10.0.0.0/8")
    page.get_by_label("Description").fill("the east side")
    page.get_by_role("button", name="Create").click()
    row = page.get_by_role("row").filter(has_text="east-1")
    expect(row).to_contain_text("CIDR 10.0.0.0/8")
    browser.screenshot(page, "scheduler-clusters")
    token = root_token(base)
    status, clusters = call(base, "GET", "/api/v1/scheduler-clusters?name=east-1", token=token)
    assert status == 200
    assert [c["scopes"]["cidrs"] for c in clusters] == [["10.0.0.0/8"]]
    cluster_id = clusters[0]["id"]

    # Edit.
    row.get_by_role("link", name="Edit").click()
    page.get_by_label("Candidate parent limit").fill("5")
    page.get_by_role("button", name="Save").click()
    page.get_by_role("heading", name="Scheduler clusters").wait_for()
    status, cluster = call(base, "GET", f"/api/v1/scheduler-clusters/{cluster_id}", token=token)
    assert cluster["config"]["candidate_parent_limit"] == 5

    # A guest user and a token.
    nav(page, "Users")
    form = page.get_by_role("form", name="Create user")
    form.get_by_label("Name", exact=True).fill("guest-1")
    form.get_by_label("Password", exact=True).fill("short")
    form.get_by_role("button", name="Create user").click()
    expect(form.get_by_role("alert")).to_contain_text("Password: 8 to 128 characters.")
    form.get_by_label("Password", exact=True).fill("guest-password-1")
    form.get_by_label("Role").select_option("guest")
    form.get_by_role("button", name="Create user").click()
    expect(page.get_by_role("status")).to_have_text("User guest-1 created with role guest.")
    expect(page.get_by_role("row").filter(has_text="guest-1")).to_contain_text("guest")
    browser.screenshot(page, "users")

    nav(page, "Access tokens")
    form = page.get_by_role("form", name="Create token")
    form.get_by_label("Name", exact=True).fill("harbor")
    form.get_by_role("button", name="Create token").click()
    secret = page.get_by_test_id("new-token").inner_text()
    assert len(secret) >= 20
    browser.screenshot(page, "tokens")
    # The token works on the Open API and is never shown again.
    status, _ = call(base, "GET", "/api/v1/users/me", token=secret)
    assert status == 200
    page.reload()
    expect(page.get_by_role("row").filter(has_text="harbor")).to_be_visible()
    assert secret not in page.content()
    # Revoked after confirming: the row says so and the manager refuses the token at once.
    row = page.get_by_role("row").filter(has_text="harbor")
    row.get_by_role("button", name="Revoke").click()
    page.get_by_role("dialog").get_by_role("button", name="Revoke").click()
    expect(row).to_contain_text("inactive")
    status, _ = call(base, "GET", "/api/v1/users/me", token=secret)
    assert status == 401

    page.get_by_role("button", name="Sign out").click()
    page.get_by_role("heading", name="Dragonfly console").wait_for()

    # The guest reads the cluster but cannot change it: no create or edit controls, inputs disabled.
    guest = browser.page()
    sign_in(guest, base, "guest-1", "guest-password-1")
    nav(guest, "Scheduler clusters")
    expect(guest.get_by_role("row").filter(has_text="east-1")).to_be_visible()
    expect(guest.get_by_role("link", name="Create scheduler cluster")).to_have_count(0)
    guest.get_by_role("row").filter(has_text="east-1").get_by_role("link", name="View").click()
    expect(guest.get_by_label("Name", exact=True)).to_be_disabled()
    expect(guest.get_by_role("button", name="Save")).to_have_count(0)
    browser.screenshot(guest, "guest-cluster")
    # And the manager refuses it anyway.
    status, body = call(base, "POST", "/api/v1/users/signin", {"name": "guest-1", "password": "guest-password-1"})
    assert status == 200
    status, _ = call(base, "PATCH", f"/api/v1/scheduler-clusters/{cluster_id}", {"bio": "x"}, token=body["token"])
    assert status == 403

    # Root deletes the cluster after confirming; cancelling keeps it.
    sign_in(page, base, "root", ROOT_PASSWORD)
    nav(page, "Scheduler clusters")
    row = page.get_by_role("row").filter(has_text="east-1")
    row.get_by_role("button", name="Delete").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text('Delete scheduler cluster "east-1"?')
    dialog.get_by_role("button", name="Cancel").click()
    expect(row).to_be_visible()
    row.get_by_role("button", name="Delete").click()
    page.get_by_role("dialog").get_by_role("button", name="Delete").click()
    expect(page.get_by_role("row").filter(has_text="east-1")).to_have_count(0)
    status, _ = call(base, "GET", f"/api/v1/scheduler-clusters/{cluster_id}", token=token)
    assert status == 404

    # At 390 px the menu folds and tables become cards; no page is wider than the screen. Signed in with the
    # keyboard alone.
    phone = browser.page(width=390, height=844)
    phone.goto(base + "/signin")
    phone.get_by_label("User name").focus()
    phone.keyboard.type("root")
    phone.keyboard.press("Tab")
    phone.keyboard.type(ROOT_PASSWORD)
    phone.keyboard.press("Enter")
    phone.get_by_role("button", name="Sign out").wait_for()
    expect(phone.get_by_role("navigation", name="Main")).to_be_hidden()
    for name in ("Users", "Overview", "Scheduler clusters", "Schedulers", "Hosts", "Preheat jobs", "Swarm view"):
        phone.get_by_role("button", name="Menu").click()
        nav(phone, name)
        expect(phone.get_by_text("Loading…")).to_have_count(0)
        width = phone.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"{name} is {width} px wide at 390 px"
    phone.get_by_role("button", name="Menu").click()
    nav(phone, "Users")
    expect(phone.get_by_role("row").filter(has_text="guest-1")).to_be_visible()
    browser.screenshot(phone, "users-390px")


def test_swarm_view_follows_a_download_live(
    tmp_path: Path, manager: tuple[str, int], browser: Browser, origin: OriginProcess
) -> None:
    """A manager, a scheduler registered with it, a seed peer and 2 peers; the swarm view is open before the
    download starts and, without a reload, shows the origin, the seed and both peers with their edges."""
    from playwright.sync_api import expect

    size = 16 * MiB
    sha = make_file(origin, "swarm-view.bin", size)
    # Slow enough that the page sees the download running (each ranged request trickles at this rate).
    origin.set_fault("swarm-view.bin", "slow", rate=1 * MiB)
    url = origin.url("swarm-view.bin")
    base, grpc_port = manager
    scheduler = {"manager": {"addr": f"127.0.0.1:{grpc_port}", "keepAlive": {"interval": "1s"}}}
    with LocalCluster(tmp_path / "cluster", peers=2, tls=False, scheduler_config=scheduler) as cluster:
        token = root_token(base)
        wait_for(
            lambda: call(base, "GET", "/api/v1/schedulers?state=active", token=token)[1],
            30,
            "the scheduler registered and active in the manager",
            interval=0.2,
        )
        page = browser.page(width=1400, height=900)
        sign_in(page, base, "root", ROOT_PASSWORD)
        nav(page, "Swarm view")
        page.get_by_label("Task ID or URL").fill(url)
        page.get_by_role("button", name="Show").click()
        expect(page.get_by_text("No scheduler knows a peer of this task (yet).")).to_be_visible()

        out = tmp_path / "out"
        with dfget_in_background(cluster, ["peer-1"], url, out) as first:
            # The first peer is under way: the page shows it (and the seed the scheduler sent to the origin).
            expect(page.get_by_test_id("swarm-node").filter(has_text="peer-1")).to_be_visible()
            with dfget_in_background(cluster, ["peer-2"], url, out) as second:
                expect(page.get_by_test_id("swarm-node").filter(has_text="peer-2")).to_be_visible()
                browser.screenshot(page, "swarm-running")
                results = {
                    **{p: f.result() for p, f in first.items()},
                    **{p: f.result() for p, f in second.items()},
                }
        assert all(r.ok for r in results.values()), describe(results)
        for peer in results:
            assert sha256_of(out / peer) == sha, peer

        # Finished: both peers show all their pieces, the seed is apart, the edges carry the bytes.
        table = page.get_by_role("table", name="Peers of the task")
        for peer in ("peer-1", "peer-2"):
            expect(table.get_by_role("row").filter(has_text=peer)).to_contain_text("Succeeded")
        expect(table.get_by_role("row").filter(has_text="seed-peer")).to_contain_text("seed peer")
        status, swarm = call(base, "GET", "/api/v1/swarm?url=" + quote(url, safe=""), token=token)
        assert status == 200
        peers = {p["hostname"]: p for p in swarm["peers"]}
        assert {"seed-peer", "peer-1", "peer-2"} <= set(peers)
        assert peers["seed-peer"]["is_seed"]
        assert peers["seed-peer"]["bytes_from_source"] == size
        names = {p["id"]: p["hostname"] for p in swarm["peers"]}
        into = {name: 0 for name in ("peer-1", "peer-2")}
        for edge in swarm["edges"]:
            if names.get(edge["child"]) in into:
                into[names[edge["child"]]] += edge["bytes"]
        for peer, traffic in ((p, r.traffic) for p, r in results.items()):
            assert traffic is not None
            # What the scheduler counted by parent is what dfget says came from the swarm.
            assert into[peer] == traffic["seed"] + traffic["peers"], (peer, swarm["edges"], traffic)
        assert into["peer-1"] + into["peer-2"] > 0
        edges = page.get_by_test_id("swarm-edge")
        from_origin = sum(1 for p in swarm["peers"] if p["bytes_from_source"] or p["state"] == "BackToSource")
        expect(edges).to_have_count(len(swarm["edges"]) + from_origin)
        expect(page.get_by_role("img", name=re.compile(r"Swarm of task"))).to_be_visible()
        browser.screenshot(page, "swarm")

        # The swarm view without a task lists the recent ones (URLs without credentials); one click shows it.
        nav(page, "Swarm view")
        recent = page.get_by_role("table", name="Recent tasks").get_by_role("row").filter(has_text="swarm-view.bin")
        expect(recent).to_contain_text("16.0 MiB")
        browser.screenshot(page, "swarm-recent-tasks")
        recent.get_by_role("link").click()
        expect(page.get_by_test_id("swarm-node")).to_have_count(4)  # origin, seed, 2 peers

        # The overview adds up what the schedulers saw: 2 peers and a seed; 48 MiB delivered, 16 from the origin.
        nav(page, "Overview")
        expect(page.get_by_test_id("stat-Hosts")).to_have_text("2")
        expect(page.get_by_test_id("stat-Seed peer hosts")).to_have_text("1")
        expect(page.get_by_test_id("saved-Last hour")).to_have_text("32.0 MiB (67%)")
        browser.screenshot(page, "overview-after-download")

        # A file preheat through the form: the seed peer fetches it; the job page follows it to SUCCESS.
        make_file(origin, "preheat.bin", 4 * MiB)
        nav(page, "Preheat jobs")
        page.get_by_role("link", name="Create preheat").click()
        form = page.get_by_role("form", name="Create preheat")
        form.get_by_role("button", name="Preheat").click()
        expect(form.get_by_role("alert")).to_have_text("Enter at least one URL.")
        form.get_by_label("URLs (one per line)").fill(origin.url("preheat.bin"))
        form.get_by_role("button", name="Preheat").click()
        page.get_by_role("heading", name=re.compile(r"^Preheat job \d+$")).wait_for()
        expect(page.get_by_test_id("job-state")).to_have_text("SUCCESS", timeout=90_000)
        expect(
            page.get_by_role("table", name="Per-host results").get_by_role("row").filter(has_text="seed-peer")
        ).to_contain_text("SUCCESS")
        browser.screenshot(page, "preheat-job")
        nav(page, "Preheat jobs")
        expect(page.get_by_role("row").filter(has_text="preheat.bin")).to_contain_text("SUCCESS")
        browser.screenshot(page, "preheat-jobs")

        # An image preheat for one platform of a two-platform image: the seed fetches that platform's config
        # and layers, each a per-host result.
        with RegistryProcess(tmp_path / "registry") as registry:
            image = build_multi_platform_image(
                tmp_path / "image", {"linux/amd64": [5 * MiB], "linux/arm64": [6 * MiB, 5 * MiB]}, tag="v1"
            )
            push(image, registry, "console/app", all_platforms=True)
            arm = image.images["linux/arm64"]
            page.get_by_role("link", name="Create preheat").click()
            form = page.get_by_role("form", name="Create preheat")
            form.get_by_label("Image").check()
            form.get_by_label("Manifest URL").fill(f"{registry.url}/v2/console/app/manifests/v1")
            form.get_by_label("Platform").fill("linux/arm64")
            form.get_by_role("button", name="Preheat").click()
            page.get_by_role("heading", name=re.compile(r"^Preheat job \d+$")).wait_for()
            expect(page.get_by_test_id("job-state")).to_have_text("SUCCESS", timeout=90_000)
            results = page.get_by_role("table", name="Per-host results")
            for blob in (arm.config, *arm.layers):
                expect(results.get_by_role("row").filter(has_text=blob.digest)).to_contain_text("SUCCESS")
            expect(results.get_by_role("row")).to_have_count(1 + 1 + len(arm.layers))  # header, config, layers
            browser.screenshot(page, "preheat-image-job")
            nav(page, "Preheat jobs")

        # A preheat of a file the origin trickles out is still running when root cancels it (after confirming).
        make_file(origin, "trickle.bin", 4 * MiB)
        origin.set_fault("trickle.bin", "slow", rate=16 * 1024)
        page.get_by_role("link", name="Create preheat").click()
        form = page.get_by_role("form", name="Create preheat")
        form.get_by_label("URLs (one per line)").fill(origin.url("trickle.bin"))
        form.get_by_role("button", name="Preheat").click()
        page.get_by_role("heading", name=re.compile(r"^Preheat job \d+$")).wait_for()
        expect(page.get_by_test_id("job-state")).to_have_text("PENDING")
        page.get_by_role("button", name="Cancel job").click()
        page.get_by_role("dialog").get_by_role("button", name="Cancel job").click()
        expect(page.get_by_test_id("job-state")).to_have_text("FAILURE")
        expect(page.get_by_test_id("job-phase")).to_contain_text("cancelled")
        expect(page.get_by_role("button", name="Cancel job")).to_have_count(0)
        browser.screenshot(page, "preheat-job-cancelled")
        nav(page, "Preheat jobs")

        # Every other page, once, with the cluster running: a title, a heading, a screenshot, no script error.
        expect(page.get_by_role("row").filter(has_text="preheat.bin")).to_be_visible()
        pages = (
            "Scheduler clusters",
            "Seed peer clusters",
            "Schedulers",
            "Seed peers",
            "Hosts",
            "Roles",
            "Audit log",
        )
        for name in pages:
            nav(page, name)
            expect(page).to_have_title(f"{name} · Dragonfly console")
            expect(page.get_by_text("Loading…")).to_have_count(0)
            browser.screenshot(page, name.lower().replace(" ", "-"))
        schedulers = page.get_by_role("table", name="Schedulers")
        nav(page, "Schedulers")
        expect(schedulers.get_by_role("row").filter(has_text="127.0.0.1")).to_contain_text("active")
        nav(page, "Hosts")
        hosts = page.get_by_role("table", name="Hosts")
        expect(hosts.get_by_role("row").filter(has_text="seed-peer")).to_contain_text("seed peer")
        expect(hosts.get_by_role("row").filter(has_text="peer-2")).to_contain_text("127.0.0.1")
        nav(page, "Audit log")
        expect(page.get_by_role("row").filter(has_text="/api/v1/jobs").first).to_contain_text("root")
