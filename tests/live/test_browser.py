"""The dashboard and the WHIP publish page in a real browser: Playwright driving Debian's
chromium against the real server on a loopback port.

Skips (with the reason) when the ``playwright`` Python package or a chromium binary is
missing: ``pip install playwright`` and ``apt-get install chromium fonts-dejavu-core``
(scripts/install-system-deps.sh). ``playwright install`` is never needed: the tests use
the system chromium (env ``EXPOSE_CHROMIUM`` to point at another one).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from live_support import SPEECH_CLIP, TOKEN, collect_events, live_config, running_server

from expose.monitor.config import STARTER_MODEL
from expose.monitor.model.verification import EXPLANATIONS

if TYPE_CHECKING:
    from conftest import Explained

    from tests.conftest import Clip


def _chromium() -> str | None:
    path = os.environ.get("EXPOSE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    return path if os.access(path, os.X_OK) else None


CHROMIUM = _chromium()
pytestmark = [pytest.mark.timeout(300), pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium (apt-get install chromium fonts-dejavu-core, or set EXPOSE_CHROMIUM)")]

sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed "
                               "(pip install playwright; the system chromium is used, no `playwright install`)")
expect = sync_api.expect

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# a fake camera (a test pattern, no face) and a fake microphone (a beep), granted without a prompt;
# and loopback ICE candidates too, to pair with the server's (ice_host_addresses = 127.0.0.1 only)
FAKE_MEDIA_ARGS = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                   "--allow-loopback-in-peer-connection"]
TIMEOUT_MS = 90_000  # per browser wait; the whole test is bounded by the timeout mark


Browser = Callable[..., contextlib.AbstractContextManager[Any]]


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    """``with browser(fake_media=False) as context:`` a chromium with a fresh user-data-dir."""
    assert CHROMIUM is not None
    with sync_api.sync_playwright() as pw:

        @contextlib.contextmanager
        def launch(fake_media: bool = False) -> Iterator[Any]:
            args = CHROMIUM_ARGS + (FAKE_MEDIA_ARGS if fake_media else [])
            ctx = pw.chromium.launch_persistent_context(str(tmp_path / "chromium-profile"), executable_path=CHROMIUM,
                                                        headless=True, args=args, timeout=60_000)
            ctx.set_default_timeout(TIMEOUT_MS)
            try:
                yield ctx
            finally:
                ctx.close()

        yield launch


def _count(text: str, label: str) -> int:
    m = re.search(rf"{label} (\d+)", text)
    assert m is not None, f"no '{label} N' in {text!r}"
    return int(m.group(1))


EXPLAINED = re.compile("|".join(map(re.escape, EXPLANATIONS.values())))


def test_dashboard_tile_chart_alert_and_acknowledge(
        browser: Browser, explained: Explained, clip: Clip, tmp_path: Path) -> None:
    # The starter model with a made-up decision (conftest), so the scores have drivers and
    # explanations; the "always" profile's threshold (-1e9) puts every scored window over it,
    # which forces the alert path (as in test_live_server.py).
    cfg = live_config(tmp_path, model={"decision": str(explained.decision)}, streams=[
        {"name": "cam1", "url": str(clip(SPEECH_CLIP)), "profile": "always", "loop": True}])
    with running_server(cfg, STARTER_MODEL, explained.profiles) as srv, browser() as ctx:
        page = ctx.new_page()
        prompts: list[str] = []

        def on_dialog(dialog: Any) -> None:  # the operator's name, asked once per browser
            prompts.append(dialog.message)
            dialog.accept("analyst-b")

        page.on("dialog", on_dialog)
        page.goto(f"{srv.url}/dashboard/?token={TOKEN}")
        expect(page.locator("#conn")).to_have_text("live")
        assert "token" not in page.url  # the page takes the token out of the address bar

        tile = page.locator('.tile[data-stream="cam1"]')
        expect(tile.locator(".claimed")).to_have_text("as always")
        expect(tile.locator(".health")).to_contain_text("pull")
        expect(tile.locator(".reason")).to_contain_text("distance")  # a scored window is plotted

        # the chart moves: the canvas changes as scores arrive, and so does the window count
        canvas = tile.locator("canvas")
        before = canvas.evaluate("c => c.toDataURL()")
        windows_before = _count(tile.locator(".health").inner_text(), "windows")
        page.wait_for_function("([sel, img]) => document.querySelector(sel).toDataURL() !== img",
                               arg=['.tile[data-stream="cam1"] canvas', before], polling=250)
        page.wait_for_function("([sel, n]) => { const m = /windows (\\d+)/.exec(document.querySelector(sel).innerText);"
                               " return m !== null && Number(m[1]) > n; }",
                               arg=['.tile[data-stream="cam1"] .health', windows_before], polling=250)
        assert canvas.evaluate("c => c.toDataURL()") != before

        # the alert appears in the list (filter: open) and the tile shows the alert state
        expect(tile).to_have_class(re.compile(r"\balert\b"))
        expect(tile.locator(".why")).to_have_text(EXPLAINED)  # why the stream is in alert
        row = page.locator("#alerts tbody tr[data-alert]").first
        expect(row).to_be_visible()
        alert_id = row.get_attribute("data-alert")
        assert alert_id
        row = page.locator(f'#alerts tbody tr[data-alert="{alert_id}"]')
        expect(row.locator("td").nth(2)).to_have_text("cam1")
        expect(row.locator("td").nth(3)).to_have_text("always")
        expect(row.locator(".status")).to_have_text("open")
        expect(row.locator("img")).to_have_attribute("src", re.compile(r"^data:image/jpeg;base64,/9j/"))
        expect(row.locator(".why")).to_have_text(EXPLAINED)

        row.locator("button.ack").click()
        expect(row).to_have_count(0)  # acknowledged: no longer among the open ones
        assert prompts == ["Your name (recorded with the action)"]

        with srv.client() as http:
            acked = http.get(f"/api/alerts/{alert_id}").json()
        assert acked["status"] == "acknowledged" and acked["acknowledged_by"] == "analyst-b"
        assert acked["acknowledged_at"] is not None
        assert acked["explanation"] in EXPLANATIONS.values() and sum(acked["reasons"].values()) == acked["n_windows"]

        page.select_option("#alert-filter", "acknowledged")
        expect(row.locator(".status")).to_have_text("ack by analyst-b")
        expect(row.locator("button.ack")).to_have_count(0)  # only Close is left
        expect(row.locator("button.close")).to_have_count(1)


def _off_thread(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on a thread of its own: Playwright's sync API keeps an event loop on this one."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(fn).result()


def _browser_scored(ms: list[dict[str, Any]]) -> bool:
    return sum(1 for m in ms if m["type"] == "score" and m["stream"] == "browsercam") >= 2


def test_browser_publishes_fake_camera_and_microphone_over_whip(
        browser: Browser, tiny_model: Path, profiles_dir: Path, tmp_path: Path) -> None:
    cfg = live_config(tmp_path)
    with running_server(cfg, tiny_model, profiles_dir) as srv, browser(fake_media=True) as ctx:
        page = ctx.new_page()
        page.goto(f"{srv.url}/dashboard/publish.html")  # served by the monitor itself
        page.fill("#stream", "browsercam")
        page.fill("#profile", "trump")
        page.fill("#token", TOKEN)
        page.click("#go")
        expect(page.locator("#status")).to_have_text("publishing: connected")

        with srv.client() as http:
            streams = {s["name"]: s for s in http.get("/api/streams").json()}
        assert "browsercam" in streams, list(streams)
        cam = streams["browsercam"]
        assert cam["profile"] == "trump" and cam["url"] is None and cam["whip_session"]
        assert cam["health"]["kind"] == "whip"

        msgs = _off_thread(lambda: asyncio.run(collect_events(srv.ws_url, _browser_scored, since=0, timeout=120)))
        with srv.client() as http:
            health = http.get("/api/streams/browsercam/health").json()

        page.click("#stop")  # DELETEs the session
        expect(page.locator("#status")).to_have_text("stopped")
        with srv.client() as http:
            assert "browsercam" not in [s["name"] for s in http.get("/api/streams").json()]

    published = [m for m in msgs if m["type"] == "stream" and m["stream"] == "browsercam"
                 and m.get("action") == "publishing"]
    assert published and published[0]["profile"] == "trump"
    scores = [m for m in msgs if m["type"] == "score" and m["stream"] == "browsercam"]
    assert len(scores) >= 2, [m["type"] for m in msgs]
    # chromium's fake camera shows a test pattern, not a face: every window must come out
    # `insufficient` (never scored, never read as authentic)
    for s in scores:
        assert s["status"] == "insufficient" and s["distance"] is None and s["state"] == "insufficient", s
        assert s["profile"] == "trump" and "face on 0%" in s["reason"], s
        assert s["t1"] > s["t0"]
    assert [s["t0"] for s in scores] == sorted(s["t0"] for s in scores)
    assert health["phase"] == "live" and health["fps"] > 0 and health["windows"] >= 2
