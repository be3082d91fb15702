"""The listening page in a real headless browser (Debian's chromium + chromium-driver, through selenium): it opens
from disk with no console error, its images load and every audio player can play its WAV."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from musicgpt_jax import audio, listening_page, pianoroll
from musicgpt_jax.frames import HOLD, ONSET, Frames
from musicgpt_jax.midi_io import frames_to_midi


def browser_or_skip():
    """A headless Chromium driven by selenium, or a one-line skip naming what is missing."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed (pip install -e '.[test]')")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver_path = shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        pytest.skip("chromium or chromedriver not found (apt-get install chromium chromium-driver; `make test` tries)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--mute-audio"):
        options.add_argument(flag)
    options.add_argument("--autoplay-policy=no-user-gesture-required")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
    except Exception as error:  # noqa: BLE001 - any failure to start is a reason to skip, named
        pytest.skip(f"chromium did not start: {str(error).splitlines()[0]}")


def piece(num_frames: int, seed: int) -> Frames:
    """Chords of random length on a 128-pitch onset/hold grid, 4/4 at 8 steps per quarter."""
    rng = np.random.default_rng(seed)
    states = np.zeros((num_frames, 128), np.uint8)
    velocities = np.zeros_like(states)
    for start in range(0, num_frames, 8):
        for pitch in rng.choice(np.arange(48, 80), 3, replace=False):
            length = int(rng.integers(2, 9))
            states[start : start + length, pitch] = HOLD
            states[start, pitch] = ONSET
            velocities[start, pitch] = rng.integers(40, 110)
    return Frames(states, velocities, tempos=((0, 110.0),))


@pytest.fixture
def page(tmp_path) -> Path:
    """A page of two samples, the first starting with a 32-frame primer, written by the project's own writers."""
    folder = tmp_path / "samples <&> 'quoted'"
    folder.mkdir()
    samples = []
    for i, prime_frames in enumerate((32, 0)):
        name = f"sample_{i:02d}"
        frames = piece(96, seed=i)
        frames_to_midi(frames).write(str(folder / f"{name}.mid"))
        pianoroll.draw_piano_roll(frames, folder / f"{name}.png", title=name, prime_frames=prime_frames)
        renderer = audio.render_wav(folder / f"{name}.mid", folder / f"{name}.wav")
        samples.append(SimpleNamespace(name=name, frames=frames, prime_frames=prime_frames, renderer=renderer))
    provenance = listening_page.Provenance(
        "python sample.py --workdir 'runs/<script>alert(1)</script>' --prime theme.mid --include_prime",
        "runs/<script>alert(1)</script>",
        300,
        "bach_chorales",
        "theme.mid",
        4,
    )
    return listening_page.write_page(folder, samples, provenance)


def test_page_opens_from_disk_plays_every_audio_and_shows_every_image(page, tmp_path):
    driver = browser_or_skip()
    try:
        driver.get(page.as_uri())
        from selenium.webdriver.common.by import By

        players = driver.find_elements(By.TAG_NAME, "audio")
        assert len(players) == 2
        assert not driver.find_elements(By.TAG_NAME, "script")  # the workdir's <script> is text, not code
        assert "runs/<script>alert(1)</script>" in driver.find_element(By.TAG_NAME, "h1").text
        driver.execute_script("for (const a of document.querySelectorAll('audio')) a.load();")
        deadline = time.time() + 30
        states = []
        while time.time() < deadline:
            states = driver.execute_script(
                "return [...document.querySelectorAll('audio')].map(a => [a.readyState, a.error && a.error.code]);"
            )
            if all(ready >= 2 for ready, _ in states):  # HAVE_CURRENT_DATA: it can play
                break
            time.sleep(0.2)
        assert all(ready >= 2 and error is None for ready, error in states), states
        durations = driver.execute_script("return [...document.querySelectorAll('audio')].map(a => a.duration);")
        assert all(d == pytest.approx(96 / 8 * 60 / 110 + audio.RELEASE_SECONDS, abs=0.6) for d in durations)
        widths = driver.execute_script(
            "return [...document.images].map(i => i.complete ? i.naturalWidth : 0);"
        )  # fmt: skip
        assert len(widths) == 2 and all(w > 0 for w in widths), widths
        primer = driver.find_element(By.CSS_SELECTOR, "#sample_00 .primer").text
        assert "first 32 frames" in primer and "begins at 2.2 s, in bar 2" in primer
        assert not driver.find_elements(By.CSS_SELECTOR, "#sample_01 .primer") or "not in this file" in (
            driver.find_element(By.CSS_SELECTOR, "#sample_01 .primer").text
        )
        driver.set_window_size(1200, 2400)
        assert driver.save_screenshot(str(tmp_path / "listening_page.png"))
        assert (tmp_path / "listening_page.png").stat().st_size > 0
        errors = [entry for entry in driver.get_log("browser") if entry["level"] in ("SEVERE", "ERROR")]
        assert not errors, errors
    finally:
        driver.quit()
