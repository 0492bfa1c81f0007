"""Screenshot a report page in headless Chromium (the images in docs/reports.md).

    .venv/bin/python scripts/screenshot_report.py report.html docs/img/report.png --height 2400

Captures the page from the top down to ``--height`` CSS pixels (the whole page with 0).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from latlab.testing.browser import HeadlessChromium


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("page", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=2400, help="0 = the whole page")
    p.add_argument("--top", type=int, default=0, help="start this many pixels down")
    a = p.parse_args()
    with HeadlessChromium(width=a.width, height=900) as browser:
        page = browser.load(a.page)
        if page.console_errors:
            raise SystemExit(f"console errors: {page.console_errors}")
        browser.screenshot(a.out, top=a.top, height=a.height or None)
    print(
        f"wrote {a.out} ({a.out.stat().st_size // 1024} KB); page loaded in {page.load_ms:.0f} ms"
    )


if __name__ == "__main__":
    main()
