"""Analyst throughput in the UI: time per decision, keyboard vs mouse, in headless Chromium.

Why: analysts are the hotline's scarcest resource; every second per decision counts, and
"hands stay off the image" only helps if the keyboard is also faster. This drives the real
pages (the web app under uvicorn, the embedded runtime on SQLite, a loopback hoster serving
synthetic images) through the same decisions twice:

- **keyboard**: on the queue page ``x`` (next item, claimed), on the item page ``j`` ``s`` ``s``
  (look at one image and veil it again), the verdict key (``n``, or ``i`` ``2``), ``d`` then
  ``Enter`` (record at once, skipping the undo window), back on the queue page;
- **mouse** (the page flow as it was: pick the item in the queue table, click): click the first
  item's link, click "show" and "hide" on one image, click the verdict radio (and the category),
  click "Record decision", back on the queue page.

Each item is a page with three synthetic JPEGs the bank does not know; decisions alternate
"not illegal" and "illegal, national" in both runs. Each decision is timed from the queue page
to the queue page showing its result (images loaded in between: the analyst must see them).
Bounded: ``--n`` decisions per mode (default 30).

    python benchmarks/analyst_throughput.py            # 30 + 30 decisions, ~1-2 min
    python benchmarks/analyst_throughput.py --n 5      # quick

Needs Chromium and chromedriver (``HOTLINE_TEST_CHROMIUM``, ``HOTLINE_TEST_CHROMEDRIVER``,
default /usr/bin/chromium and /usr/bin/chromedriver). Loopback only; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

HOST = "images.hoster-a.test"
# Keystroke-Level Model operator times (Card, Moran & Newell 1980): a keystroke by an average
# skilled typist, pointing the mouse at a target, a button press + release, moving a hand
# between keyboard and mouse. Used to add the person's motor time the browser does not have.
KLM_K, KLM_P, KLM_BB, KLM_H = 0.28, 1.1, 0.2, 0.4


def _stack(tmp: Path) -> dict[str, Any]:
    import yaml

    from doubles.loopback import LoopbackSite, SmtpSink, free_port, serve_app
    from entrypoints.bootstrap import bootstrap
    from entrypoints.demo import NoDns
    from entrypoints.web import create_app
    from hotline.config import Settings
    from hotline.runtime.embedded import EmbeddedRuntime
    from hotline.storage.unit_of_work import SqlUnitOfWork
    from hotline.web.auth import new_token

    site = LoopbackSite("127.0.0.2", free_port("127.0.0.2")).start()
    smtp = SmtpSink().start()
    hosting = tmp / "hosting.yaml"
    hosting.write_text(yaml.safe_dump({
        "hosts": {HOST: ["127.0.0.2"]},
        "networks": [{"range": "127.0.0.2/32", "country": "NL", "asn": 64501, "hoster": "Hoster A B.V.",
                      "abuse": "abuse@hoster-a.test"}],
    }))
    settings = Settings(database_url=f"sqlite:///{tmp / 'bench.db'}", kafka_brokers=None, hosting_file=hosting,
                        partners_file=None, smtp_host=smtp.host, smtp_port=smtp.port, allow_private_fetch=True,
                        notice_from="ntd@bench.test", hotline_name="Hotline (bench)", fetch_timeout_seconds=5)
    system = bootstrap(settings, dns=NoDns())
    token = new_token()
    with system.sessions() as session:
        store = SqlUnitOfWork(session)
        store.users.add("bench-analyst", "analyst", token)
        store.commit()
    runtime = EmbeddedRuntime(system.sessions, system.build_stages())
    runtime.start()
    port = free_port()
    server, thread = serve_app(create_app(system), port)
    return {"base": f"http://127.0.0.1:{port}", "site": site, "site_url": f"http://{HOST}:{site.port}",
            "system": system, "runtime": runtime, "server": server, "thread": thread, "smtp": smtp,
            "token": token}


def _items(stack: dict[str, Any], n: int, seed0: int) -> None:
    """``n`` pages of three unknown synthetic images, reported and waiting for an analyst."""
    import httpx

    from hashing.synthetic import photo_like_jpeg

    site, ids = stack["site"], []
    with httpx.Client(base_url=stack["base"], trust_env=False, timeout=10) as api:
        for k in range(n):
            base = f"/bench-{uuid.uuid4().hex[:8]}"
            for j in range(3):
                site.add(f"{base}/{j}.jpg", "image/jpeg", photo_like_jpeg(480, 360, seed=seed0 + 3 * k + j))
            site.add(f"{base}/index.html", "text/html",
                     "".join(f'<img src="{base}/{j}.jpg">' for j in range(3)).encode())
            r = api.post("/api/v1/reports", json={"urls": [f"{stack['site_url']}{base}/index.html"]})
            ids.append(r.json()["report_id"])
        deadline = time.monotonic() + 120
        headers = {"Authorization": f"Bearer {stack['token']}"}
        while True:
            states = [i["state"] for rid in ids for i in api.get(f"/api/v1/reports/{rid}", headers=headers)
                      .json()["items"]]
            if len(states) == n and all(s == "awaiting_assessment" for s in states):
                return
            if time.monotonic() > deadline:
                raise SystemExit(f"items did not reach the queue: {states}")
            time.sleep(0.1)


def _browser(tmp: Path) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = os.environ.get("HOTLINE_TEST_CHROMIUM", "/usr/bin/chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                f"--user-data-dir={tmp / 'profile'}", "--no-proxy-server",
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", "--window-size=1280,1000"):
        options.add_argument(arg)
    service = Service(executable_path=os.environ.get("HOTLINE_TEST_CHROMEDRIVER", "/usr/bin/chromedriver"))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(30)
    return driver


def _wait(driver: Any, check: Any, timeout: float = 20) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout, poll_frequency=0.02).until(check)


def _images_loaded(driver: Any) -> bool:
    return bool(driver.execute_script(
        "var i = document.querySelectorAll('img.veiled, figure.live img');"
        "return i.length > 0 && Array.prototype.every.call(i, function (x) { return x.complete && x.naturalWidth > 0; });"))


def _on_queue_with_result(driver: Any, base: str) -> bool:
    from selenium.webdriver.common.by import By

    return driver.current_url.startswith(f"{base}/analyst") and "/items/" not in driver.current_url \
        and bool(driver.find_elements(By.ID, "flash"))


def keyboard_decision(driver: Any, base: str, illegal: bool) -> int:
    """One decision by keyboard; returns the number of key presses."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    def press(*keys: str) -> None:
        for key in keys:
            ActionChains(driver).send_keys(key).perform()

    press("x")
    _wait(driver, lambda d: "/analyst/items/" in d.current_url and _images_loaded(d))
    keys = ["j", "s", "s"] + (["i", "2"] if illegal else ["n"]) + ["d", Keys.ENTER]
    press(*keys)
    _wait(driver, lambda d: _on_queue_with_result(d, base))
    return 1 + len(keys)


def mouse_decision(driver: Any, base: str, illegal: bool) -> int:
    """The same decision by mouse through the page flow; returns the number of clicks."""
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, "tr.queue-item td.url a").click()
    _wait(driver, lambda d: "/analyst/items/" in d.current_url and _images_loaded(d))
    toggle = driver.find_elements(By.CSS_SELECTOR, "button.toggle")[1]
    toggle.click()
    toggle.click()
    driver.find_element(By.ID, "verdict-illegal" if illegal else "verdict-not-illegal").click()
    clicks = 5
    if illegal:
        driver.find_element(By.ID, "category-national").click()
        clicks += 1
    driver.find_element(By.ID, "decide").click()
    _wait(driver, lambda d: _on_queue_with_result(d, base))
    return clicks


def run(n: int) -> list[dict[str, Any]]:
    from selenium.webdriver.common.by import By

    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        stack = _stack(tmp)
        driver = _browser(tmp)
        try:
            base = stack["base"]
            driver.get(f"{base}/login?next=/analyst")
            driver.find_element(By.ID, "token").send_keys(stack["token"])
            driver.find_element(By.ID, "sign-in").click()
            _wait(driver, lambda d: d.current_url == f"{base}/analyst")
            results = []
            for mode, decide, seed in (("mouse (page flow)", mouse_decision, 10_000),
                                       ("keyboard", keyboard_decision, 20_000)):
                _items(stack, n, seed)
                driver.get(f"{base}/analyst")
                times, inputs = [], 0
                for k in range(n):
                    t0 = time.perf_counter()
                    inputs += decide(driver, base, illegal=k % 2 == 1)
                    times.append(time.perf_counter() - t0)
                per = inputs / n
                motor = per * KLM_K if decide is keyboard_decision else per * (KLM_P + KLM_BB) + KLM_H
                results.append({"mode": mode, "n": n, "times": times, "inputs": per, "motor": motor})
            return results
        finally:
            driver.quit()
            stack["server"].should_exit = True
            stack["thread"].join(10)
            stack["runtime"].stop()
            stack["smtp"].stop()
            stack["site"].stop()
            stack["system"].engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=30, help="decisions per mode (default 30)")
    args = parser.parse_args()
    n = max(1, min(args.n, 200))
    results = run(n)
    base = statistics.mean(results[0]["times"])
    print(f"\nAnalyst throughput, {n} decisions per mode (3 synthetic images per item), "
          f"{platform.machine()} {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}\n")
    print("| flow | decisions | inputs per decision | mean s/decision | median | p95 | decisions/hour | vs mouse "
          "| + KLM motor time | s/decision with it | vs mouse |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    human_base = base + results[0]["motor"]
    for r in results:
        t = sorted(r["times"])
        mean = statistics.mean(t)
        p95 = t[min(len(t) - 1, int(round(0.95 * (len(t) - 1))))]
        print(f"| {r['mode']} | {r['n']} | {r['inputs']:.1f} | {mean:.3f} | {statistics.median(t):.3f} | {p95:.3f} "
              f"| {3600 / mean:,.0f} | {base / mean:.2f}× | {r['motor']:.2f} | {mean + r['motor']:.2f} "
              f"| {human_base / (mean + r['motor']):.2f}× |")
    print("\nMeasured times are the machine's (page loads, live image fetches, the decision's transaction). "
          f"The KLM columns add a person's motor time: keys x {KLM_K} s; clicks x ({KLM_P} s pointing + "
          f"{KLM_BB} s press), plus {KLM_H} s homing to the mouse. Time to look and think is the same in "
          "both flows and not included.")


if __name__ == "__main__":
    main()
