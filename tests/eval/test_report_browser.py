"""The report in a real browser (headless Chromium): no console error, every figure rendered.

Skipped when chromium is missing, unless ``POLYPYTHIA_REQUIRE_BROWSER=1`` (set by ``make test``,
which installs it with ``make chromium``).
"""

from __future__ import annotations

import time

from support.browser import Browser, chromium_binary

# Each plot div of the page, and those Plotly has drawn (traces inside its main <svg>).
COUNT_PLOTS = """JSON.stringify({
  divs: document.querySelectorAll('.plotly-graph-div').length,
  drawn: [...document.querySelectorAll('.js-plotly-plot')]
    .filter(d => d.querySelector('svg.main-svg .cartesianlayer .trace, svg.main-svg .hm')).length,
  traces: [...document.querySelectorAll('.js-plotly-plot')]
    .map(d => d.querySelectorAll('.scatterlayer .trace, .heatmaplayer .hm').length),
  plotly: typeof Plotly === 'object' ? Plotly.version : null
})"""


def _rendered(browser: Browser, timeout: float = 60.0) -> dict:
    import json

    deadline = time.monotonic() + timeout
    while True:
        state = json.loads(browser.evaluate(COUNT_PLOTS))
        if state["divs"] and state["drawn"] == state["divs"] or time.monotonic() > deadline:
            return state
        time.sleep(0.5)


def test_report_renders_in_chromium_without_console_errors(report_page, tmp_path):
    binary = chromium_binary()
    index, html = report_page
    expected = html.count('class="plotly-graph-div"')
    assert expected >= 7
    with Browser(binary, tmp_path / "profile") as browser:
        browser.open(index.resolve().as_uri())
        state = _rendered(browser)
        errors = browser.errors()
        # Legend click toggles a seed: the trace is hidden, then shown again (interactivity).
        hidden = browser.evaluate(
            "(() => { const d = document.getElementById('fig-train-micro');"
            " const i = d.data.findIndex(t => t.legendgroup === 'sw-micro-s1');"
            " Plotly.restyle(d, {visible: 'legendonly'}, [i]);"
            " return d.data[i].visible; })()"
        )
    assert errors == []
    assert state["plotly"], "plotly.js did not load"
    assert state["divs"] == expected
    assert state["drawn"] == expected, state
    assert all(n > 0 for n in state["traces"]), state["traces"]
    assert hidden == "legendonly"


def test_browser_check_catches_a_console_error(tmp_path):
    # The test above can fail: a page that logs an error and throws is caught.
    binary = chromium_binary()
    page = tmp_path / "bad.html"
    page.write_text(
        "<html><body><script>console.error('planted'); undefinedFunction();</script></body></html>"
    )
    with Browser(binary, tmp_path / "profile") as browser:
        browser.open(page.as_uri())
        time.sleep(0.5)
        browser.evaluate("1")
        errors = browser.errors()
    assert any("planted" in e for e in errors)
    assert any("undefinedFunction" in e for e in errors)
