"""The README's picture of the page (docs/page.png), and docs/api.md's of its Classify mode (docs/classify.png),
taken from a running service.

    make serve   # or: .venv/bin/python -m service.serve --port 8000
    .venv/bin/python docs/shoot_page.py [--url http://127.0.0.1:8000] [--out docs/page.png]
    .venv/bin/python docs/shoot_page.py --classify [--out docs/classify.png]

Drives Debian's Chromium through Playwright (as tests/web do): the default model draws six samples of one caption
from seed 3, and the player is scrubbed to step 12 of 32, where the write window and the word weights show. With
--classify: statistician-omniglot in Classify mode, its first five example characters picked (each a class of five
drawings and a query of its sixth), classified.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from playwright.sync_api import sync_playwright

CAPTION = "the digit 3 is at the top left of the image ."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("page.png"))
    parser.add_argument("--step", type=int, default=12)
    parser.add_argument("--classify", action="store_true", help="shoot the Classify mode (docs/classify.png)")
    args = parser.parse_args()
    if args.classify and args.out == parser.get_default("out"):
        args.out = args.out.with_name("classify.png")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium") or "/usr/bin/chromium", headless=True,
                                    args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1000, "height": 820})
        page.goto(args.url)
        if args.classify:
            classify(page, args.out)
            browser.close()
            print(f"wrote {args.out}")
            return
        page.wait_for_function("document.querySelectorAll('#examples li').length > 0")
        page.fill("#caption", CAPTION)
        page.fill("#n", "6")
        page.fill("#seed", "3")
        page.click("#submit")
        page.wait_for_selector("#player:not([hidden])", timeout=120_000)
        page.wait_for_function("[...document.querySelectorAll('#grid img')].every(i => i.naturalWidth > 0)")
        page.eval_on_selector("#scrub", f"e => {{ e.value = '{args.step}'; e.dispatchEvent(new Event('input')); }}")
        page.wait_for_function(f"(f => f.src.endsWith('/frames/{args.step}.png') && f.complete && f.naturalWidth > 0)"
                               "(document.querySelector('#frame'))")
        page.screenshot(path=str(args.out))
        browser.close()
    print(f"wrote {args.out}")


def classify(page, out: Path) -> None:
    page.wait_for_function("document.querySelectorAll('#model option').length > 0")
    page.select_option("#model", "statistician-omniglot")
    page.check("input[name=mode][value=few_shot]")
    for i in range(5):
        page.click(f"#pick-list img[data-index='{i}']")
    page.click("#submit")
    page.wait_for_selector("#labels-wrap:not([hidden])", timeout=120_000)
    page.locator("#job").scroll_into_view_if_needed()
    page.locator("#job").screenshot(path=str(out))


if __name__ == "__main__":
    main()
