"""``awares-report`` on real runs of the plugin (the shipped synthetic checkpoint, two modes) and of a
stock lmms-eval model (``qwen2_5_vl`` on the tiny checkpoint, as a baseline), all through the
``lmms_eval`` command in this process, and its gallery in a real headless Chromium (Debian's, started
by the test)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from awares_lmms.core import protocol
from awares_lmms.data import quickstart_data, shipped_checkpoints, synthetic
from awares_lmms.report import awares_report as report
from awares_lmms.report import gallery, paper_table
from awares_lmms.report.runs import find_runs
from tests.commands import run_lmms_eval

REPO = Path(__file__).resolve().parents[2]
CHECKPOINT = str(shipped_checkpoints.synthetic_checkpoint("awares"))
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
LIMIT = 6


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory, tiny_dir):
    root = tmp_path_factory.mktemp("report_runs")
    data = root / "data"
    quickstart_data.write_sample_set(data, per_task=LIMIT)
    synthetic.write_parquet(data / "awares_synth.parquet", 12, seed=2, prefix="test")
    env = {"AWARES_DATASETS_DIR": str(data), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    tasks = "awares_synth,pope,docvqa"
    for name, extra in (("awares", ""), ("full", ",mode=full")):
        status, log = run_lmms_eval(["--model", "awares", "--model_args",
                                     f"pretrained={CHECKPOINT},device=cpu,save_images={root / 'images' / name}{extra}",
                                     "--tasks", tasks, "--limit", str(LIMIT), "--batch_size", "4", "--log_samples",
                                     "--output_path", str(root / name)], env=env, cwd=REPO)
        assert status == 0, log[-3000:]
    # A stock lmms-eval model on the same tasks (our task directory given explicitly): the baseline row.
    status, log = run_lmms_eval(["--model", "qwen2_5_vl", "--model_args",
                                 f"pretrained={tiny_dir},device=cpu,device_map=cpu,max_pixels=200704",
                                 "--include_path", str(REPO / "tasks_config"), "--tasks", "awares_synth,pope",
                                 "--limit", "4", "--gen_kwargs", "max_new_tokens=8", "--log_samples",
                                 "--output_path", str(root / "stock")], env=env, cwd=REPO)
    assert status == 0, log[-3000:]
    return root


@pytest.fixture(scope="module")
def built(runs_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    paths = [runs_dir / "awares", runs_dir / "full", runs_dir / "stock"]
    index = report.build(paths, out, labels=["AwaRes", "full", "stock"], paper_rows=["AwaRes"])
    return out, index, find_runs(paths, ["AwaRes", "full", "stock"])


@pytest.mark.slow  # three real lmms_eval runs (about 35 s)
def test_table_numbers_are_the_results_jsons(built):
    out, _, runs = built
    rows = {r["label"]: r for r in json.loads((out / "table.json").read_text())}
    assert list(rows) == ["AwaRes", "full", "stock", "AwaRes (paper)"]
    for run in runs:
        data = json.loads(run.results_file.read_text())["results"]
        row = rows[run.label]
        for b in paper_table.BENCHMARKS:
            if b.task not in data:
                assert row["scores"][b.task] is None
                continue
            assert row["scores"][b.task] == pytest.approx(data[b.task][f"{b.metric},none"] * b.scale)
            for ratio in ("rtr", "rtr_paper"):
                assert row[ratio][b.task] == data[b.task].get(f"{ratio},none")
    assert rows["full"]["rtr"]["pope"] == 1.0 and rows["AwaRes"]["rtr"]["pope"] < 1.0
    assert rows["stock"]["rtr"]["pope"] is None and rows["stock"]["scores"]["pope"] is not None
    md = (out / "table.md").read_text()
    assert "| AwaRes (paper) | 80.64 | 0.32 |" in md and "awares_synth" in md  # other tasks listed below


@pytest.mark.slow  # three real lmms_eval runs (about 35 s)
def test_figures_and_crop_counts(built):
    out, _, runs = built
    for name in ("accuracy_vs_rtr.png", "crops.png", "latency.png"):
        with Image.open(out / name) as img:
            assert img.width > 300 and img.height > 200
    lines = (out / "crops.csv").read_text().splitlines()
    header = lines[0].split(",")
    awares = runs[0]
    for line in lines[1:]:
        cells = dict(zip(header, line.split(",")))
        if cells["run"] == "AwaRes" and cells["task"] == "awares_synth":
            samples = awares.samples("awares_synth")
            assert int(cells["no crop"]) == sum(not s["crops"] for s in samples)
            assert int(cells["bottom-right"]) == sum(s["crops"].count("bottom-right") for s in samples)
            assert int(cells["valid"]) + int(cells["none"]) + int(cells["fallback"]) == len(samples)
    assert not any(line.startswith("stock,") for line in lines)  # no AwaRes fields, no crop histogram


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("Debian's chromium and chromium-driver are not installed (.ci/run installs them)")
    from selenium import webdriver  # noqa: PLC0415 - only where a browser exists
    from selenium.webdriver.chrome.service import Service  # noqa: PLC0415

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1400,1000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def _visible(driver) -> int:
    return driver.execute_script("return document.querySelectorAll('.card:not([hidden])').length")


@pytest.mark.slow  # three real lmms_eval runs (about 35 s)
def test_gallery_in_a_real_browser(built, browser):
    from selenium.webdriver.support.ui import Select  # noqa: PLC0415

    _, index, runs = built
    browser.get(index.as_uri())
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
    total = sum(len(run.samples(t)) for run in runs for t in run.tasks)
    assert len(browser.find_elements("css selector", ".card")) == total == _visible(browser)
    assert browser.find_element("id", "visible-count").text == str(total)

    Select(browser.find_element("id", "filter-task")).select_by_visible_text("pope")
    assert _visible(browser) == sum(len(run.samples("pope")) for run in runs)
    Select(browser.find_element("id", "filter-task")).select_by_visible_text("all")
    Select(browser.find_element("id", "filter-decision")).select_by_visible_text("crop")
    cropped = sum(bool(s.get("crops")) and not s.get("error") and not s["tool_call_status"].startswith("fallback")
                  for run in runs for t in run.tasks for s in run.samples(t))
    assert 0 < _visible(browser) == cropped
    Select(browser.find_element("id", "filter-correct")).select_by_value("false")
    assert _visible(browser) < cropped or cropped == 0
    for select in ("filter-decision", "filter-correct"):
        Select(browser.find_element("id", select)).select_by_index(0)
    Select(browser.find_element("id", "sort")).select_by_value("rtr-asc")
    ratios = browser.execute_script(
        "return Array.from(document.querySelectorAll('.card')).map(c => c.dataset.rtr).filter(r => r !== '')"
        ".map(Number)")
    assert ratios == sorted(ratios) and len(ratios) > 1

    # The drawn boxes are the logged regions, where the protocol's geometry puts them.
    checked = 0
    samples = {(run.label, t, s["doc_id"]): s for run in runs for t in run.tasks for s in run.samples(t)}
    for card in browser.find_elements("css selector", ".card"):
        boxes = card.find_elements("css selector", ".box")
        sample = samples[(card.get_attribute("data-run"), card.get_attribute("data-task"),
                          int(card.get_attribute("data-doc")))]
        assert [b.get_attribute("data-region") for b in boxes] == (sample["crops"] if sample.get("image_file") else [])
        if not boxes:
            continue
        img = card.find_element("css selector", "img.original").rect
        width, height = sample["image_size"]
        for box, name in zip(boxes, sample["crops"]):
            expected = ((0, 0, width, height) if name == "all"
                        else protocol.region_box(protocol.REGION_NAMES.index(name), width, height))
            rect = box.rect
            assert rect["x"] - img["x"] == pytest.approx(expected[0] / width * img["width"], abs=1.5)
            assert rect["y"] - img["y"] == pytest.approx(expected[1] / height * img["height"], abs=1.5)
            assert rect["width"] == pytest.approx((expected[2] - expected[0]) / width * img["width"], abs=1.5)
            assert rect["height"] == pytest.approx((expected[3] - expected[1]) / height * img["height"], abs=1.5)
            checked += 1
    assert checked > 0


@pytest.mark.parametrize("size", [(640, 480), (1001, 333), (100, 2000)])
def test_boxes_are_the_protocol_regions_in_percent(size):
    width, height = size
    names = list(protocol.REGION_NAMES)
    boxes = gallery.region_boxes(names + ["all"], size)
    for box, index in zip(boxes, range(protocol.NUM_REGIONS)):
        x0, y0, x1, y1 = protocol.region_box(index, width, height)
        assert (box.left * width / 100, box.top * height / 100) == pytest.approx((x0, y0))
        assert ((box.left + box.width) * width / 100, (box.top + box.height) * height / 100) == pytest.approx((x1, y1))
    assert (boxes[-1].region, boxes[-1].width, boxes[-1].height) == ("all", 100.0, 100.0)
    assert gallery.region_boxes(["top"], None) == []


def test_per_sample_score_and_decision_across_the_tasks_formats():
    assert gallery.sample_score({"anls": 0.8}, "docvqa") == 0.8
    assert gallery.sample_score({"pope_f1_score": {"score": 1.0, "prediction": "yes"}}, "pope") == 1.0
    assert gallery.sample_score({"accuracy": True}, "awares_synth") is None  # not a number
    assert gallery.sample_score({}, "chartqa") is None
    assert gallery.decision({"crops": ["top"], "tool_call_status": "valid"}) == "crop"
    assert gallery.decision({"crops": ["all"], "tool_call_status": "fallback:unparseable"}) == "fallback"
    assert gallery.decision({"crops": [], "tool_call_status": "none"}) == "direct"
    assert gallery.decision({"error": "server (turn 1): ...", "tool_call_status": "error"}) == "error"


@pytest.mark.slow
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_synthetic_figures_are_redrawn_from_a_reproductions_table(tmp_path, version):
    """``python -m awares_lmms.report.reproduction DIR``, the reproduction's last stage, on the table the
    shipped checkpoints come from: one point per evaluated row, both figures written; no table, exit 2."""
    from awares_lmms.report import reproduction as synthetic_report

    table = json.loads((shipped_checkpoints.ASSET_DIRS[version] / "table.json").read_text())
    shutil.copy2(shipped_checkpoints.ASSET_DIRS[version] / "table.json", tmp_path / "table.json")
    assert synthetic_report.evaluated_rows(table)[:2] == ["full", "lr"] and "labels" not in synthetic_report.evaluated_rows(table)
    proc = subprocess.run([sys.executable, "-m", "awares_lmms.report.reproduction", str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ("accuracy_vs_rtr.png", "fig5_crops.png"):
        with Image.open(tmp_path / name) as im:
            assert im.width > 300 and len(set(im.convert("L").getdata())) > 10  # drawn, not blank
    assert not (tmp_path / "grpo_curves.png").exists()  # no trainer state copied: no curves, no crash
    missing = subprocess.run([sys.executable, "-m", "awares_lmms.report.reproduction", str(tmp_path / "none")],
                             cwd=REPO, capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "table.json" in missing.stderr


# ----------------------------------------------------------------------------- escaped output

# Script and attribute payloads: each sets window.__pwned if it ever runs.
PAYLOADS = ['<script>window.__pwned = "script"</script>', '"><img src=x onerror="window.__pwned=\'attr\'">',
            "'><svg onload=\"window.__pwned='svg'\">", "</dd></dl><script>window.__pwned='close'</script>"]


def _hostile_run(root: Path) -> Path:
    """An lmms-eval output directory whose every text field, label source, error and image name is a payload."""
    run = root / "hostile" / PAYLOADS[1].replace("/", "_")[:40]
    run.mkdir(parents=True)
    image = root / "page.png"
    Image.new("RGB", (320, 240), (200, 180, 90)).save(image)
    stamp = "20261207_000000"
    samples = []
    for i, payload in enumerate(PAYLOADS):
        samples.append({"doc_id": i, "input": payload, "target": payload, "filtered_resps": [payload],
                        "resps": [[payload]], "tool_call": payload, "error": payload if i % 2 else None,
                        "crops": ["top-left"], "tool_call_status": "valid", "rtr": 0.3, "rtr_paper": 0.25,
                        "image_size": [320, 240], "image_file": str(image), "pope_accuracy": {"score": 1.0}})
    (run / f"{stamp}_samples_{PAYLOADS[0]}.jsonl".replace("/", "_")).write_text(
        "".join(json.dumps(s) + "\n" for s in samples))
    results = {"results": {PAYLOADS[0].replace("/", "_"): {"pope_accuracy,none": 1.0, "rtr,none": 0.3}},
               "n-samples": {PAYLOADS[0].replace("/", "_"): {"original": 4, "effective": 4}},
               "config": {"model": "awares", "model_args": f"pretrained={PAYLOADS[2]},mode={PAYLOADS[3]}",
                          "awares_protocol": {"preset": PAYLOADS[0]},
                          "awares_document_errors": {PAYLOADS[0].replace("/", "_"): [{"doc_id": 1, "error": PAYLOADS[1]}]}}}
    (run / f"{stamp}_results.json").write_text(json.dumps(results))
    return run


@pytest.fixture(scope="module")
def hostile_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    run = _hostile_run(root)
    index = report.build([run, run], root / "out", labels=[PAYLOADS[1], None])
    return index


def test_every_rendered_text_is_escaped(hostile_report):
    html = Path(hostile_report).read_text()
    for live in ("<script>window.__pwned", "onerror=\"window", "<svg onload", "<img src=x"):
        assert live not in html
    assert "&lt;script&gt;window.__pwned" in html and html.count("<script>") == 1  # the page's own script


def test_no_injected_script_runs_in_a_real_browser(hostile_report, browser):
    browser.get(Path(hostile_report).as_uri())
    assert browser.execute_script("return window.__pwned === undefined")
    cards = browser.find_elements("css selector", ".card")
    assert len(cards) == 2 * len(PAYLOADS)
    # The payloads show as text, character for character.
    shown = {dd.text for card in cards for dd in card.find_elements("css selector", "dd")}
    assert set(PAYLOADS) <= shown
    assert browser.execute_script("return document.querySelectorAll('script').length") == 1
    assert PAYLOADS[1] in browser.execute_script("return document.body.innerText")  # the label, as text


# ----------------------------------------------------------------------------- one-line errors


def _one_sample_run(root: Path, sample) -> Path:
    run = root / "run"
    run.mkdir(parents=True)
    (run / "20261207_000000_samples_pope.jsonl").write_text(json.dumps(sample) + "\n")
    (run / "20261207_000000_results.json").write_text(json.dumps(
        {"results": {"pope": {"pope_accuracy,none": 1.0}}, "config": {"model": "awares", "model_args": "pretrained=x"}}))
    return run


def _sample(**fields) -> dict:
    return {"doc_id": 0, "input": "q", "target": "yes", "filtered_resps": ["yes"], "crops": ["top-left"],
            "tool_call_status": "valid", "image_size": [320, 240], **fields}


@pytest.mark.parametrize("case", ["not_an_object", "out_is_a_file", "missing_run"])
def test_report_input_problems_end_in_one_line(tmp_path, capsys, case):
    """Before: tracebacks (AttributeError on a line that is a JSON list, FileExistsError for --out)."""
    run = _one_sample_run(tmp_path, ["a", "list"] if case == "not_an_object" else _sample())
    out = tmp_path / "out"
    if case == "out_is_a_file":
        out.write_text("a file")
    target = tmp_path / "nowhere" if case == "missing_run" else run
    assert report.main([str(target), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("awares-report: ") and "Traceback" not in err
    expected = {"not_an_object": "_samples_pope.jsonl:1: not a sample record (a JSON list)",
                "out_is_a_file": str(out), "missing_run": "no lmms-eval results"}[case]
    assert expected in err


@pytest.mark.parametrize("case", ["unknown_region", "not_an_image", "image_is_a_directory"])
def test_a_sample_the_report_cannot_draw_is_noted_on_its_card(tmp_path, capsys, case):
    """Before: ``tuple.index(x): x not in tuple`` for a region name, ``UnidentifiedImageError`` for a
    non-image: the whole report lost. Now the card says what it could not show, and so does stderr."""
    fake = tmp_path / "image.png"
    if case == "image_is_a_directory":
        fake.mkdir()
    else:
        fake.write_bytes(b"not an image at all" if case == "not_an_image" else b"")
        if case == "unknown_region":
            Image.new("RGB", (320, 240)).save(fake)
    sample = _sample(image_file=str(fake), crops=["top-left", "upper-middle"] if case == "unknown_region" else ["top-left"])
    run = _one_sample_run(tmp_path, sample)
    assert report.main([str(run), "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    fragment = {"unknown_region": "unknown region name(s) ['upper-middle'] not drawn",
                "not_an_image": "is not a readable image (UnidentifiedImageError)",
                "image_is_a_directory": "is not a file"}[case]
    assert fragment in err
    html = (tmp_path / "out" / "index.html").read_text()
    assert fragment.replace("'", "&#39;") in html
    if case == "unknown_region":
        assert html.count('class="box"') == 1  # the known region is still drawn
