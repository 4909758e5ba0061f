"""A real browser (Debian's chromium, headless) logs in and sees JupyterLab."""

import re

import pytest
import requests
from conftest import browser_login
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

pytestmark = [pytest.mark.integration, pytest.mark.browser]


def test_alice_picks_tensorflow_and_imports_it_in_a_notebook(lab, browser, tmp_path):
    session = lab.login("alice")  # the browser starts from a stopped server
    if "" in (session.hub_api("/users/alice").json().get("servers") or {}):
        session.stop("alice")

    browser_login(browser, lab, "alice")

    # the picker: alice's groups allow three profiles; she takes TensorFlow
    WebDriverWait(browser, 60).until(EC.presence_of_element_located((By.ID, "datalab-profiles")))
    offered = [e.get_attribute("value") for e in browser.find_elements(By.NAME, "profile")]
    assert offered == ["python", "datascience", "tensorflow"]
    browser.find_element(By.CSS_SELECTOR, 'input[name="profile"][value="tensorflow"]').click()
    browser.find_element(By.CSS_SELECTOR, '#spawn_form [type="submit"]').click()

    wait_until(browser, 180, EC.url_contains("/user/alice/lab"),
               lambda: f"server not opened after 180 s; the browser is at {browser.current_url}")
    browser.get(session.server_url("alice") + "lab?reset")  # a fresh workspace: the launcher, whatever was open before
    card = WebDriverWait(browser, 120).until(EC.element_to_be_clickable(
        (By.CSS_SELECTOR, '.jp-LauncherCard[data-category="Notebook"][title*="TensorFlow 2.21"]')))
    assert "JupyterLab" in browser.title
    # the image's own kernel only: no generic "Python 3 (ipykernel)" beside it
    kernels = [c.get_attribute("title") for c in browser.find_elements(By.CSS_SELECTOR, '.jp-LauncherCard[data-category="Notebook"]')]
    assert kernels == ["Python 3.11 · TensorFlow 2.21 (CPU)"]
    card.click()
    editor = WebDriverWait(browser, 60).until(EC.element_to_be_clickable(
        (By.CSS_SELECTOR, ".jp-NotebookPanel .jp-Cell .cm-content")), "the new notebook's first cell editor")
    # JupyterLab drops a Shift+Enter pressed before the notebook's session has its
    # kernel (runCell sees `hasNoKernel` and clears the cell): a cold TensorFlow
    # kernel takes many seconds to start. Run the cell only once the kernel is
    # started and this page is connected to it, as a person waits for "Idle".
    wait_kernel_connected(browser, session, "alice")
    editor.click()
    editor.send_keys('import tensorflow as tf; print("TF", tf.__version__, tf.reduce_sum([1, 2, 3]).numpy())')
    editor.send_keys(Keys.SHIFT, Keys.ENTER)

    def outputs(_=None):  # TensorFlow may log to stderr first: look at every output
        return "\n".join(e.text for e in browser.find_elements(By.CSS_SELECTOR, ".jp-NotebookPanel .jp-OutputArea-output"))

    try:
        wait_until(
            browser, 240, lambda _: "TF 2.21" in outputs(),
            lambda: f"no TensorFlow output after 240 s; cell prompt {first_prompt(browser)!r}, "
                    f"kernel status {kernel_status(browser)!r}, outputs {outputs()!r}")
    finally:
        browser.save_screenshot(str(tmp_path / "jupyterlab-tensorflow.png"))
    assert re.search(r"^TF 2\.21\.\d+ 6$", outputs(), re.M), outputs()


def kernel_status(browser):
    """JupyterLab's status-bar kernel item, e.g. "Python 3.11 · TensorFlow 2.21 (CPU) | Idle"."""
    return " / ".join(e.text for e in browser.find_elements(By.CSS_SELECTOR, ".jp-StatusBar-TextItem") if "|" in e.text)


def first_prompt(browser):
    found = browser.find_elements(By.CSS_SELECTOR, ".jp-NotebookPanel .jp-Cell .jp-InputPrompt")
    return found[0].text if found else None


def wait_kernel_connected(browser, session, user, timeout=240):
    """Until the server has the notebook's kernel idle with a client connected
    (this page's websocket) and JupyterLab itself shows the kernel "Idle"."""
    token = session.token(user)
    seen = {}

    def ready(_):
        found = requests.get(f"{session.server_url(user)}api/sessions", timeout=10,
                             headers={"Authorization": f"token {token}"}).json()
        seen["sessions"] = [(s["path"], s["kernel"]["execution_state"], s["kernel"]["connections"]) for s in found]
        seen["status bar"] = kernel_status(browser)
        connected = any(state == "idle" and connections >= 1 for _, state, connections in seen["sessions"])
        return connected and "| Idle" in seen["status bar"]

    wait_until(
        browser, timeout, ready, lambda: f"kernel of the new notebook not started and connected after {timeout} s; seen: {seen}")


def wait_until(browser, timeout, condition, describe):
    """WebDriverWait whose failure says what was awaited and what was seen then."""
    try:
        return WebDriverWait(browser, timeout, poll_frequency=0.5).until(condition)
    except TimeoutException:
        raise AssertionError(describe()) from None
