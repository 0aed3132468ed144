"""report.html in a real browser: headless Chromium (Debian's ``chromium``) driven by Playwright.

The page is opened from its file (``file://``, offline, as a user opens it) and checked through what the
browser draws: screenshots of the canvases before and after each action. Where no Chromium or no Playwright
is installed, every test here is skipped with the reason (``pytest -ra``, as ``make test`` runs, lists it);
``.ci/run`` installs Chromium so that CI runs them. ``UNETR_CHROMIUM`` names another Chromium binary;
``UNETR_SCREENSHOTS=folder`` also saves the README's screenshot there.
"""

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from unetr.report.palette import DISAGREEMENT, class_hex

VIEWPORT = {"width": 1400, "height": 1000}


def find_chromium():
    """The Chromium binary to drive: ``$UNETR_CHROMIUM``, else the first of the usual names on the PATH."""
    env = os.environ.get("UNETR_CHROMIUM")
    if env:
        return env if Path(env).is_file() else None
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _missing() -> str:
    """Why the browser tests cannot run here ("" when they can)."""
    if find_chromium() is None:
        return ("no Chromium to test report.html in: apt-get install chromium (.ci/run does), "
                "or UNETR_CHROMIUM=/path/to/chromium")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "no playwright to drive Chromium with: pip install -e '.[dev]'"
    return ""


MISSING = _missing()


@pytest.fixture
def browser(request):
    """The browser, or a skip that names the test and the reason (`pytest -ra` lists each test not run and why).

    The module's browser and report are made only past this check, so a machine without Chromium pays nothing.
    """
    if MISSING:
        pytest.skip(f"{request.node.name} not run: {MISSING}")
    return request.getfixturevalue("browser_session")


@pytest.fixture(scope="module")
def browser_session():
    from playwright.sync_api import sync_playwright

    exe = find_chromium()
    pw = sync_playwright().start()
    try:
        b = pw.chromium.launch(executable_path=exe, args=["--force-color-profile=srgb", "--disable-gpu"])
    except Exception as e:  # noqa: BLE001 - say why this browser cannot be driven, then stop
        pw.stop()
        pytest.fail(f"{exe} did not start under Playwright: {e}")
    yield b
    b.close()
    pw.stop()


@pytest.fixture(scope="module")
def report(tmp_path_factory, known_case, phantom_cases, tiny_run, phantom_files, helpers):
    """A report of the known case and three phantoms, with the run's curves, model and attention maps."""
    from unetr.report import attention_for_case, write_html_report

    cases = {"known": known_case, **phantom_cases}
    att = attention_for_case(tiny_run, phantom_files / "imagesTs" / "phantom_001_0000.nii.gz",
                             phantom_files / "labelsTs" / "phantom_001.nii.gz", case="phantom_001")
    out = tmp_path_factory.mktemp("report")
    path = write_html_report(out, run_dir=tiny_run, per_case=helpers.score(cases), case_images=cases, attention=att,
                             title="unetr report: phantoms")
    return path


@pytest.fixture
def page(browser, request):
    report = request.getfixturevalue("report")
    ctx = browser.new_context(viewport=VIEWPORT, device_scale_factor=1)
    pg = ctx.new_page()
    errors = []
    pg.on("console", lambda m: errors.append(f"console.{m.type}: {m.text}") if m.type in ("error", "warning") else None)
    pg.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    pg.goto(report.resolve().as_uri())
    pg.wait_for_selector("body[data-ready='1']", timeout=20000)
    pg.errors = errors
    pg.report = report
    yield pg
    ctx.close()


# ------------------------------------------------------------------------------------------ helpers
def shot(page, selector):
    """RGB pixels ``(H, W, 3)`` of an element as the browser drew it."""
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(page.locator(selector).screenshot())).convert("RGB")).astype(np.int16)


def count_colour(rgb, hex_colour, tol=2):
    target = np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(rgb - target).max(axis=-1) <= tol).sum())


def slice_of(page, plane, root="#viewer"):
    return int(page.get_attribute(f"{root} [data-testid=plane-{plane}]", "data-slice"))


def canvas(plane, root="#viewer"):
    return f"{root} canvas[data-plane={plane}]"


def open_case(page, case):
    page.click(f"#case-table tr[data-case='{case}'] td.name")
    page.wait_for_function(f"document.getElementById('viewer').dataset.case === {case!r}")


def wait_slice(page, plane, value):
    page.wait_for_function(f"document.querySelector('#viewer [data-testid=plane-{plane}]').dataset.slice === '{value}'")


def set_for_colour_counts(page, mode):
    """Opaque overlays, no crosshair: each drawn voxel then has exactly its colour."""
    page.select_option("select[data-control=mode]", mode)
    page.focus("input[data-control=opacity]")
    page.keyboard.press("End")
    page.uncheck("input[data-control=crosshair]")
    assert page.input_value("input[data-control=opacity]") == "100"


def table_cases(page):
    return page.eval_on_selector_all("#case-table tbody tr", "rows => rows.map(r => r.dataset.case)")


# ------------------------------------------------------------------------------------------ tests
def test_page_loads_without_console_errors(page):
    assert page.errors == []
    assert page.report.stat().st_size < 10e6
    assert len(table_cases(page)) == 4
    assert page.locator("[data-testid=summary] tbody tr").count() == 4  # three classes and their mean
    assert page.locator("svg[data-chart]").count() == 3  # loss, validation Dice, learning rate
    assert "tiny" in page.inner_text("[data-testid=model-facts]")
    assert page.locator("#attention canvas").count() == 3
    assert page.inner_text("[data-testid=viewer-case]") == table_cases(page)[0]  # the worst case opens first
    for plane in ("axial", "coronal", "sagittal"):
        assert shot(page, canvas(plane)).std() > 10  # drawn, not blank


def test_table_sorts_by_any_column(page, helpers, known_case, phantom_cases):
    per = helpers.score({"known": known_case, **phantom_cases})
    mean = {c: np.nanmean([s.dice for s in v.values()]) for c, v in per.items()}
    assert table_cases(page) == sorted(mean, key=mean.get)  # worst first by default
    page.click("#case-table th[data-key=mean_dice]")
    assert table_cases(page) == sorted(mean, key=mean.get, reverse=True)
    page.click("#case-table th[data-key=name]")
    assert table_cases(page) == sorted(per)
    page.click("#case-table th[data-key=name]")
    assert table_cases(page) == sorted(per, reverse=True)
    page.click("#case-table th[data-key='2:hd95']")  # spleen HD95, smallest first
    hd = {c: v[2].hd95 for c, v in per.items()}
    assert table_cases(page) == sorted(hd, key=hd.get)


def test_clicking_a_case_shows_its_slices(page):
    first = page.inner_text("[data-testid=viewer-case]")
    before = shot(page, canvas("axial"))
    other = next(c for c in table_cases(page) if c != first)
    open_case(page, other)
    assert page.inner_text("[data-testid=viewer-case]") == other
    assert page.get_attribute(f"#case-table tr[data-case='{other}']", "class").strip() == "selected"
    after = shot(page, canvas("axial"))
    assert after.std() > 10
    assert after.shape != before.shape or np.abs(after - before).mean() > 1


def test_wheel_keys_and_slider_change_the_slice(page):
    open_case(page, "known")
    box = page.locator(canvas("axial")).bounding_box()
    z0 = slice_of(page, "axial")
    img0 = shot(page, canvas("axial"))
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.wheel(0, 120)
    wait_slice(page, "axial", z0 + 1)
    img1 = shot(page, canvas("axial"))
    assert np.abs(img1 - img0).mean() > 0.5  # the image moved on by one slice
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowDown")
    wait_slice(page, "axial", z0 - 1)
    slider = page.locator("#viewer input[data-slider=axial]")
    sb = slider.bounding_box()
    slider.click(position={"x": 3, "y": sb["height"] / 2})  # the far left: the first slice
    wait_slice(page, "axial", 0)
    assert page.input_value("#viewer input[data-slider=axial]") == "0"
    assert np.abs(shot(page, canvas("axial")) - img1).mean() > 0.5
    assert "z 1 / 24" in page.inner_text("#viewer [data-testid=plane-axial] .head")


def test_planes_keep_the_physical_aspect_ratio(page, helpers):
    open_case(page, "known")
    (X, Y, Z), (sx, sy, sz) = helpers.KNOWN_SHAPE, helpers.KNOWN_SPACING
    size = {p: page.locator(canvas(p)).bounding_box() for p in ("axial", "coronal", "sagittal")}
    for plane, (w_mm, h_mm) in {"axial": (X * sx, Y * sy), "coronal": (X * sx, Z * sz), "sagittal": (Y * sy, Z * sz)}.items():
        assert size[plane]["width"] / size[plane]["height"] == pytest.approx(w_mm / h_mm, rel=0.03), plane
    assert size["axial"]["height"] == pytest.approx(size["sagittal"]["width"], abs=1.5)  # one scale for all planes


def test_crosshair_links_the_planes(page, helpers):
    open_case(page, "known")
    X, Y, _ = helpers.KNOWN_SHAPE
    box = page.locator(canvas("axial")).bounding_box()
    col, row = 10, 20  # axial columns run from the patient's right (x = X - 1) to the left, rows from anterior
    page.mouse.click(box["x"] + (col + 0.5) * box["width"] / X, box["y"] + (row + 0.5) * box["height"] / Y)
    assert slice_of(page, "sagittal") == X - 1 - col
    assert slice_of(page, "coronal") == Y - 1 - row


def test_class_toggle_removes_its_colour(page):
    open_case(page, "known")
    set_for_colour_counts(page, "pred")
    liver, spleen = class_hex(3)[1:]
    img = shot(page, canvas("axial"))
    n_liver, n_spleen = count_colour(img, liver), count_colour(img, spleen)
    assert n_liver > 500 and n_spleen > 100  # the slice through both boxes
    page.uncheck("input[data-class='1']")
    img = shot(page, canvas("axial"))
    assert count_colour(img, liver) == 0
    assert count_colour(img, spleen) == n_spleen
    page.check("input[data-class='1']")
    assert count_colour(shot(page, canvas("axial")), liver) == n_liver


def test_disagreement_mode_shows_the_known_false_positive_and_negative(page, helpers):
    open_case(page, "known")
    set_for_colour_counts(page, "diff")
    counts = {k: page.inner_text(f"[data-testid={k}]") for k in ("fp-1", "fn-1", "fp-2", "fn-2", "fp-3", "fn-3")}
    assert counts == {"fp-1": "60", "fn-1": "0", "fp-2": "0", "fn-2": "8", "fp-3": "0", "fn-3": "0"}
    X, Y, _ = helpers.KNOWN_SHAPE
    box = page.locator(canvas("axial")).bounding_box()
    px_per_voxel = box["width"] / X * box["height"] / Y
    fp_z, fn_z = helpers.KNOWN_FP[2].start + 2, helpers.KNOWN_FN[2].start
    page.fill("#viewer input[data-slider=axial]", str(fp_z))
    wait_slice(page, "axial", fp_z)
    img = shot(page, canvas("axial"))
    assert count_colour(img, DISAGREEMENT["fp"]) / px_per_voxel == pytest.approx(3 * 4, rel=0.25)  # the 3 x 4 block
    assert count_colour(img, DISAGREEMENT["fn"]) == 0
    page.fill("#viewer input[data-slider=axial]", str(fn_z))
    wait_slice(page, "axial", fn_z)
    img = shot(page, canvas("axial"))
    assert count_colour(img, DISAGREEMENT["fn"]) / px_per_voxel == pytest.approx(2 * 2, rel=0.35)
    assert count_colour(img, DISAGREEMENT["fp"]) == 0
    page.uncheck("input[data-class='2']")  # toggles hold in this mode too
    assert count_colour(shot(page, canvas("axial")), DISAGREEMENT["fn"]) == 0


def test_window_presets_and_drag(page):
    open_case(page, "known")
    page.uncheck("input[data-control=crosshair]")
    assert page.inner_text("[data-testid=window]") == "W 400.0 L 40.00"  # CT: soft tissue first
    soft = shot(page, canvas("axial"))
    page.select_option("select[data-control=window]", label="lung")
    assert page.inner_text("[data-testid=window]") == "W 1500 L -600.0"
    lung = shot(page, canvas("axial"))
    assert np.abs(lung - soft).mean() > 5
    box = page.locator(canvas("axial")).bounding_box()
    page.mouse.move(box["x"] + 50, box["y"] + 50)
    page.mouse.down(button="right")
    page.mouse.move(box["x"] + 150, box["y"] + 90, steps=4)
    page.mouse.up(button="right")
    assert page.inner_text("[data-testid=window]") != "W 1500 L -600.0"
    assert np.abs(shot(page, canvas("axial")) - lung).mean() > 2


def test_training_curves_show_values_on_hover(page):
    rect = page.locator("svg[data-chart=dice] rect")
    box = rect.bounding_box()
    rect.hover(position={"x": box["width"] - 2, "y": box["height"] / 2})  # the right end: the last iteration
    tip = page.locator("[data-testid=tip-dice]")
    assert tip.is_visible()
    text = tip.inner_text()
    assert "iteration 300" in text and "mean: 0.8429" in text and "liver: 0.9286" in text
    page.locator("svg[data-chart=loss] rect").hover(position={"x": 1, "y": 5})
    assert "iteration 10\n" in page.inner_text("[data-testid=tip-loss]")
    assert "training loss: 2.171" in page.inner_text("[data-testid=tip-loss]")
    assert not tip.is_visible()  # the other chart's tip went away with the mouse


def test_attention_view_follows_block_and_query(page):
    root = "#attention"
    page.locator(root).scroll_into_view_if_needed()
    last = shot(page, canvas("axial", root))
    query = page.inner_text(f"{root} .toolbar span.muted")
    page.focus(f"{root} input[data-control=layer]")
    page.keyboard.press("Home")  # the first block
    first = shot(page, canvas("axial", root))
    assert np.abs(first - last).mean() > 0.5
    box = page.locator(canvas("axial", root)).bounding_box()
    page.mouse.click(box["x"] + 5, box["y"] + 5)  # the corner patch becomes the query
    assert page.inner_text(f"{root} .toolbar span.muted") != query
    assert np.abs(shot(page, canvas("axial", root)) - first).mean() > 0.5


def test_readme_screenshot(page, tmp_path):
    """The viewer on a phantom, as the README shows it (UNETR_SCREENSHOTS=docs/images to refresh that file)."""
    from PIL import Image

    open_case(page, "phantom_002")
    page.select_option("select[data-control=mode]", "both")
    path = tmp_path / "report_viewer.png"
    page.locator("#viewer").screenshot(path=str(path))
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(np.int16)
    assert rgb.shape[1] > 1000 and rgb.std() > 20
    blended = [count_colour(rgb, c) for c in class_hex(4)[1:]]  # outlines of the reference are drawn opaque
    assert all(n > 50 for n in blended), blended
    target = os.environ.get("UNETR_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / "report_viewer.png")
