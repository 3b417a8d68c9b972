"""Screenshots of the annotation app for docs/APP.md: an image, a tabular and a text project in headless
Chromium (Debian's /usr/bin/chromium through playwright), each after a few answers so the progress bar
and the held-out F1 chart have something to show.

    .venv/bin/python scripts/app_screenshots.py [--out docs/images]

The projects are made as a user would (``init_project`` from a CSV with a key column, a folder of
image files, a text column with instructions) from the same small data the app's tests use.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from pathlib import Path

import httpx
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from apphelpers import (  # noqa: E402 - the test helpers build the data
    CHROMIUM,
    CHROMIUM_ARGS,
    ThreadServer,
    breast_frame,
    digit_images,
    review_texts,
)
from cincer.app import Session, load_project  # noqa: E402
from cincer.app.project import SessionConfig, init_project  # noqa: E402
from cincer.app.server import create_app  # noqa: E402
from cincer.models import TrainConfig  # noqa: E402

CONFIG = SessionConfig(train=TrainConfig(epochs=20, lr=1e-2), seed=0)
GUIDE = """# Sentiment of film reviews

Label the **opinion of the reviewer**, not the plot:

- *positive*: they liked the film overall
- *negative*: they did not

When a review is mixed, go with its last sentence. Unsure? Press `s` to skip; skipped reviews can be revisited.
"""


def projects(folder: Path) -> dict[str, Path]:
    rows = digit_images(folder / "scans", 240, flip=30)
    pd.DataFrame(rows).to_csv(folder / "digits.csv", index=False)
    breast_frame(300, flip=40).to_csv(folder / "patients.csv", index=False)
    texts, labels = review_texts(160, flip=20)
    pd.DataFrame({"id": [f"r{1000 + i}" for i in range(160)], "review": texts, "sentiment": labels}).to_csv(
        folder / "reviews.csv", index=False)
    (folder / "guide.md").write_text(GUIDE)
    return {
        "image": init_project(folder / "image", data=folder / "digits.csv", labels="label", images=folder / "scans",
                              holdout=0.2, n_known=60, config=CONFIG),
        "tabular": init_project(folder / "tabular", data=folder / "patients.csv", labels="diagnosis",
                                id_column="patient", holdout=0.2, n_known=60, config=CONFIG),
        "text": init_project(folder / "text", data=folder / "reviews.csv", labels="sentiment", text="review",
                             id_column="id", holdout=0.2, n_known=40, config=CONFIG, instructions=folder / "guide.md"),
    }


@contextlib.contextmanager
def serving(root: Path):
    session = Session(load_project(root), who="screenshot", background=True).start()
    try:
        with ThreadServer(create_app(session)) as server:
            server.session = session
            yield server
    finally:
        session.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        for kind, root in projects(Path(tmp)).items():
            with serving(root) as server:
                api = httpx.Client(base_url=server.url)
                for k in range(6):  # a few answers: progress, counts and an F1 trend to show
                    q = api.get("/api/state").json()["query"]
                    body = {"action": "skip"} if k == 4 else {"suspicious_label": q["prediction"]}
                    api.post(f"/api/queries/{q['id']}/answer", json=body)
                server.session.wait_idle()
                page = browser.new_context(viewport={"width": 1100, "height": 820}, device_scale_factor=1).new_page()
                page.goto(server.url + "/")
                page.wait_for_selector(".card[data-role=suspicious] .labels button")
                if kind == "text":
                    page.wait_for_selector("#instructions")  # shown on the first open
                    page.screenshot(path=str(args.out / "app_instructions.png"))
                    print(args.out / "app_instructions.png")
                    page.keyboard.press("Escape")
                q = api.get("/api/state").json()["query"]
                page.keyboard.press(server.session.project.hotkeys[q["prediction"]])
                if kind == "image":
                    page.click("button[data-cmd=alternatives]")
                    page.wait_for_selector(".alt img")
                page.wait_for_timeout(300)
                path = args.out / f"app_{kind}.png"
                page.screenshot(path=str(path), full_page=True)
                print(path)
                page.context.close()
        browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
