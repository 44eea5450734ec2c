"""Drive the demo (tools/demo.py) in headless Chromium with selenium: the browser test and the
docs' screenshot both go through these functions.

Only the system's browser is used (Debian's ``chromium`` and ``chromium-driver``:
/usr/bin/chromium, /usr/bin/chromedriver); Selenium Manager is kept offline, so nothing
downloads a browser or a driver.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Sequence

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHROMIUM = os.environ.get("ALBEF_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("ALBEF_CHROMEDRIVER", "/usr/bin/chromedriver")


def free_port() -> int:
    """A TCP port free on the loopback interface now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_demo(model: str, port: int, extra: Sequence[str] = (), log_path: str | None = None) -> subprocess.Popen:
    """``python tools/demo.py --model MODEL --port PORT ...`` in a subprocess (cwd the repo, one torch thread)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", GRADIO_ANALYTICS_ENABLED="False")
    out = open(log_path, "w") if log_path else subprocess.DEVNULL
    return subprocess.Popen([sys.executable, "tools/demo.py", "--model", model, "--port", str(port), *extra],
                            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)


def wait_until_served(url: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    """Return once ``url`` answers 200; RuntimeError if the demo exits first or ``timeout`` passes."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"the demo exited with status {proc.returncode} before serving {url}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"the demo did not serve {url} within {timeout:.0f} s")


def stop(proc: subprocess.Popen) -> None:
    """End the demo subprocess (terminate, then kill after 10 s)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def chromium(width: int = 1400, height: int = 1000):
    """A headless Chromium webdriver on the system's browser and driver."""
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager: never download a browser or a driver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", f"--window-size={width},{height}",
              "--hide-scrollbars"):
        opts.add_argument(a)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)


def _wait(driver, condition, timeout: float, what: str):
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.2).until(condition)
    except Exception as e:  # selenium's TimeoutException says nothing about what was awaited
        raise RuntimeError(f"{what} did not happen within {timeout:.0f} s") from e


def score_in_page(driver, url: str, image: str, texts: Sequence[str], timeout: float = 60.0) -> dict[str, dict[str, str]]:
    """Open the demo, upload ``image``, enter ``texts`` (one per line), press Score and read the
    score table off the page: {text: {column: cell text}}. Waits for the Grad-CAM gallery too."""
    from selenium.webdriver.common.by import By

    driver.get(url)
    _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#match-image input[type=file]"), timeout, "the page loading")
    driver.find_element(By.CSS_SELECTOR, "#match-image input[type=file]").send_keys(os.path.abspath(image))
    _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#match-image img"), timeout, "the image upload")
    box = driver.find_element(By.CSS_SELECTOR, "#match-texts textarea")
    box.clear()
    box.send_keys("\n".join(texts))
    driver.find_element(By.ID, "match-submit").click()
    _wait(driver, lambda d: d.find_element(By.ID, "match-status").text.startswith(("Scored", "Error")), timeout, "scoring")
    status = driver.find_element(By.ID, "match-status").text
    if status.startswith("Error"):
        raise RuntimeError(f"the page says: {status}")
    _wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#match-gradcam img")) > 1, timeout, "the Grad-CAM gallery")
    rows = driver.find_elements(By.CSS_SELECTOR, "#match-scores [role=row]")
    header = [c.text for c in rows[0].find_elements(By.CSS_SELECTOR, "[role=columnheader]")]
    table = {}
    for r in rows[1:]:
        cells = [c.text for c in r.find_elements(By.CSS_SELECTOR, "[role=gridcell]")]
        if cells and cells[0]:
            table[cells[0]] = dict(zip(header, cells))
    return table
