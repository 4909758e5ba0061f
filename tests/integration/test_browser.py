"""A real browser (Debian's chromium, headless) logs in and sees JupyterLab."""

import shutil
import tempfile

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

pytestmark = [pytest.mark.integration, pytest.mark.browser]


@pytest.fixture
def browser():
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver, "chromium and chromium-driver are installed by `make test`"
    profile = tempfile.mkdtemp(prefix="datalab-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1400,900",
                 f"--user-data-dir={profile}"):
        options.add_argument(flag)
    b = webdriver.Chrome(service=Service(driver), options=options)
    yield b
    b.quit()
    shutil.rmtree(profile, ignore_errors=True)


def test_alice_logs_in_and_sees_jupyterlab(lab, browser, tmp_path):
    browser.get(lab.url + "/hub/login")
    browser.find_element(By.ID, "username_input").send_keys("alice")
    browser.find_element(By.ID, "password_input").send_keys(lab.logins["alice"])
    browser.find_element(By.ID, "login_submit").click()
    WebDriverWait(browser, 120).until(EC.url_contains("/user/alice/lab"))
    WebDriverWait(browser, 120).until(
        EC.presence_of_element_located((By.CSS_SELECTOR, ".jp-Launcher, #jp-main-dock-panel"))
    )
    assert "JupyterLab" in browser.title
    browser.save_screenshot(str(tmp_path / "jupyterlab.png"))
