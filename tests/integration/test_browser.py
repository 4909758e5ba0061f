"""A real browser (Debian's chromium, headless) logs in and sees JupyterLab."""

import re

import pytest
from conftest import browser_login
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

    WebDriverWait(browser, 180).until(EC.url_contains("/user/alice/lab"))
    browser.get(lab.url + "/user/alice/lab?reset")  # a fresh workspace: the launcher, whatever was open before
    card = WebDriverWait(browser, 120).until(EC.element_to_be_clickable(
        (By.CSS_SELECTOR, '.jp-LauncherCard[data-category="Notebook"][title*="TensorFlow 2.21"]')))
    assert "JupyterLab" in browser.title
    # the image's own kernel only: no generic "Python 3 (ipykernel)" beside it
    kernels = [c.get_attribute("title") for c in browser.find_elements(By.CSS_SELECTOR, '.jp-LauncherCard[data-category="Notebook"]')]
    assert kernels == ["Python 3.11 · TensorFlow 2.21 (CPU)"]
    card.click()
    editor = WebDriverWait(browser, 60).until(EC.element_to_be_clickable(
        (By.CSS_SELECTOR, ".jp-NotebookPanel .jp-Cell .cm-content")))
    editor.click()
    editor.send_keys('import tensorflow as tf; print("TF", tf.__version__, tf.reduce_sum([1, 2, 3]).numpy())')
    editor.send_keys(Keys.SHIFT, Keys.ENTER)

    def outputs(_=None):  # TensorFlow may log to stderr first: look at every output
        return "\n".join(e.text for e in browser.find_elements(By.CSS_SELECTOR, ".jp-NotebookPanel .jp-OutputArea-output"))

    try:
        WebDriverWait(browser, 240).until(lambda _: "TF 2.21" in outputs())
    finally:
        browser.save_screenshot(str(tmp_path / "jupyterlab-tensorflow.png"))
    assert re.search(r"^TF 2\.21\.\d+ 6$", outputs(), re.M), outputs()
