"""The documentation site in a real browser: headless Chromium opens the built derivation and walkthrough pages
from disk, with no network, and finds their math typeset, their images loaded and their links resolved.

Build the site first (`mkdocs build --strict`, the [docs] extra); the test needs Debian's `chromium` and
`chromium-driver` and the `selenium` package, and skips without them or without a built site — except where
BP_TORCH_SITE_TEST=1 (CI sets it), where any of them missing is a failure. Each page's screenshot is kept in
site/_screenshots/.
"""

import json
import os
import re
import shutil
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / "site"
MATH_PAGES = ["derivation.html", "walkthrough.html"]
PAGES = [*MATH_PAGES, "training.html", "index.html"]  # the TensorBoard pictures, the start page
REQUIRED = os.environ.get("BP_TORCH_SITE_TEST") == "1"
# TeX that survived typesetting: a delimiter arithmatex leaves for MathJax, or a control sequence
RAW_TEX = re.compile(r"\\\(|\\\)|\\\[|\\\]|\$\$|\\(?:frac|sum|partial|delta|sigma|odot|mathbf|hat|tilde|top)\b")

pytestmark = pytest.mark.xdist_group("site")  # one browser for the module


def _unavailable(reason: str):
    if REQUIRED:
        pytest.fail(f"BP_TORCH_SITE_TEST=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    if not (SITE / "index.html").is_file():
        _unavailable("the site is not built: run `mkdocs build --strict`")
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        _unavailable("Chromium is missing: apt-get install chromium chromium-driver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _unavailable("selenium is missing: pip install -e '.[docs]'")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument("--window-size=1280,1800")
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})  # the requests it made
    session = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    session.set_script_timeout(60)
    yield session
    session.quit()


def _open(browser, name: str):
    """The page opened from disk, after MathJax has typeset it; its screenshot saved, at its first equation."""
    browser.get_log("performance")  # only this page's requests from here on
    browser.get((SITE / name).as_uri())
    browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "(window.MathJax && MathJax.startup ? MathJax.startup.promise : Promise.reject('no MathJax'))"
        ".then(() => done('ok'), (e) => done(String(e)));"
    )
    browser.execute_script("document.querySelector('.arithmatex')?.scrollIntoView({block: 'center'})")
    shots = SITE / "_screenshots"
    shots.mkdir(exist_ok=True)
    browser.save_screenshot(str(shots / name.replace(".html", ".png")))
    return name, browser


@pytest.fixture(scope="module", params=PAGES)
def page(request, browser):
    return _open(browser, request.param)


@pytest.fixture(scope="module", params=MATH_PAGES)
def math_page(request, browser):
    return _open(browser, request.param)


def test_math_is_typeset(math_page):
    name, browser = math_page
    typeset = browser.execute_script("return document.querySelectorAll('.arithmatex mjx-container svg').length")
    assert typeset >= 5, f"{name}: {typeset} typeset equations"
    # the text a reader sees, code blocks left out (Python may spell \( in a string)
    text = browser.execute_script(
        "const main = document.querySelector('article').cloneNode(true);"
        "main.querySelectorAll('pre, code, mjx-assistive-mml').forEach((e) => e.remove());"
        "return main.innerText;"
    )
    left = sorted(set(RAW_TEX.findall(text)))
    assert not left, f"{name}: raw TeX left in the page: {left}"
    errors = browser.execute_script("return document.querySelectorAll('mjx-merror, [data-mjx-error]').length")
    assert errors == 0, f"{name}: MathJax could not typeset {errors} equations"


def test_images_load(page):
    name, browser = page
    images = browser.execute_script(
        "return [...document.images].map((i) => [i.getAttribute('src'), i.complete && i.naturalWidth > 0]);"
    )
    assert images, f"{name} shows no image"
    assert all(loaded for _, loaded in images), f"{name}: images that did not load: {images}"


def test_nothing_is_fetched_from_the_network(page):
    """Offline: every request the page made is for a file of the site (MathJax included), none to a host."""
    name, browser = page
    requested = [
        json.loads(entry["message"])["message"]["params"]["request"]["url"]
        for entry in browser.get_log("performance")
        if '"Network.requestWillBeSent"' in entry["message"]
    ]
    remote = [url for url in requested if not url.startswith(("file:", "data:", "blob:", "about:"))]
    assert not remote, f"{name} requests from the network: {remote}"
    assert any(url.endswith("assets/mathjax/tex-svg.js") for url in requested), requested


def _ids(path: Path) -> set[str]:
    return set(re.findall(r'\sid="([^"]+)"', path.read_text(errors="replace")))


def test_internal_links_resolve(page):
    """Every link into the site names a file of the build and, with a #fragment, an element of that file (a code
    span #L51-L53: both of its lines)."""
    name, browser = page
    hrefs = browser.execute_script("return [...document.querySelectorAll('a[href]')].map((a) => a.href);")
    internal = [href for href in hrefs if href.startswith("file:")]
    assert len(internal) > 10, f"{name}: {len(internal)} internal links"
    broken = []
    for href in sorted(set(internal)):
        url = urlsplit(href)
        target = Path(unquote(url.path))
        if target.is_dir():
            target = target / "index.html"
        if not (target.is_file() and target.resolve().is_relative_to(SITE.resolve())):
            broken.append(href)
        elif url.fragment and target.suffix == ".html":
            wanted = re.fullmatch(r"L(\d+)-L(\d+)", url.fragment)
            names = [f"L{wanted[1]}", f"L{wanted[2]}"] if wanted else [unquote(url.fragment)]
            if not set(names) <= _ids(target):
                broken.append(href)
    assert not broken, f"{name}: links to nothing in the site: {broken}"


def test_source_links_land_on_the_linked_line(browser):
    """A derivation link to code opens that file's page with the linked span marked."""
    browser.get((SITE / "derivation.html").as_uri())
    href = browser.execute_script("return [...document.querySelectorAll('a[href*=\"source/\"]')][0].href;")
    assert re.search(r"source/bp_torch/.+\.py\.html#L\d+", href), href
    browser.get(href)
    line = urlsplit(href).fragment.split("-")[0]
    marked = browser.execute_script(f"return document.getElementById('{line}').matches(':target, .marked');")
    assert marked, href
