//! The HTML viewer of `tlc view` driven in headless Chromium: the page loads without console
//! errors, opening a block shows its nodes, no two visible boxes overlap after opening and
//! searching, and a screenshot is written. A script appended to a copy of the page does the
//! clicking and records what it saw in the DOM, which `--dump-dom` prints.
//!
//! Skipped, with the reason printed, where Chromium is not installed (`apt-get install -y
//! chromium`; `.ci/run` installs it).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use tlc_compiler::draw::{self, Direction, DrawOptions};
use tlc_compiler::span::SourceLoader;
use tlc_compiler::{compile, Options};

struct RootLoader;

impl SourceLoader for RootLoader {
    fn load(&self, path: &str) -> Result<String, String> {
        std::fs::read_to_string(common::root().join(path)).map_err(|e| e.kind().to_string())
    }
}

/// The first Chromium found on `PATH`.
fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser", "google-chrome"].iter().flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name))).find(|p| p.is_file())
}

/// Runs headless Chromium on a local file with a fresh profile; returns (stdout, stderr).
fn run_chromium(bin: &Path, work: &Path, page: &Path, extra: &[&str]) -> (String, String) {
    let profile = work.join(format!("profile-{}", extra.len()));
    let _ = std::fs::remove_dir_all(&profile);
    let out = Command::new(bin)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"])
        .args(["--disable-dev-shm-usage", "--enable-logging=stderr", "--v=0", "--virtual-time-budget=3000", "--window-size=1400,900"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("run chromium");
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Records errors from the start of the page.
const HEAD_HOOK: &str = "<script>window.__errors=[];window.addEventListener('error',function(e){window.__errors.push(String(e.message));});\
(function(){var ce=console.error;console.error=function(){window.__errors.push(Array.prototype.join.call(arguments,' '));ce.apply(console,arguments);};})();</script>";

/// Opens `block`, checks that `node` appears, searches `query`, and checks visible boxes and
/// frames for overlaps; writes the results as JSON into `<pre id="test-out">`.
fn test_script(block: &str, node: &str, query: &str) -> String {
    format!(
        r#"<script>
(function () {{
  var out = {{ errors: window.__errors }};
  function shown(el) {{ if (!el || el.style.display === 'none') return false; var r = el.getBoundingClientRect(); return r.width > 0 && r.height > 0; }}
  function overlaps() {{
    var boxes = Array.prototype.filter.call(document.querySelectorAll('#boxes > g'), shown).map(function (g) {{ return [g.id, g.getBoundingClientRect()]; }});
    var frames = Array.prototype.filter.call(document.querySelectorAll('#frames > g'), shown).map(function (g) {{ return [g.id, g.querySelector('rect').getBoundingClientRect()]; }});
    var bad = [];
    function meet(a, b) {{ return a.left < b.right - 0.5 && b.left < a.right - 0.5 && a.top < b.bottom - 0.5 && b.top < a.bottom - 0.5; }}
    function within(o, i) {{ return i.left >= o.left - 0.5 && i.top >= o.top - 0.5 && i.right <= o.right + 0.5 && i.bottom <= o.bottom + 0.5; }}
    for (var i = 0; i < boxes.length; i++) {{
      for (var j = i + 1; j < boxes.length; j++) if (meet(boxes[i][1], boxes[j][1])) bad.push(boxes[i][0] + ' / ' + boxes[j][0]);
      for (var k = 0; k < frames.length; k++) if (meet(boxes[i][1], frames[k][1]) && !within(frames[k][1], boxes[i][1])) bad.push(boxes[i][0] + ' / ' + frames[k][0]);
    }}
    return {{ boxes: boxes.length, frames: frames.length, bad: bad.slice(0, 10) }};
  }}
  try {{
    out.initial = overlaps();
    out.nodeHiddenBefore = !shown(tlcView.box({node:?}));
    out.opened = tlcView.open({block:?});
    out.nodeShownAfter = shown(tlcView.box({node:?}));
    out.afterOpen = overlaps();
    var hit = tlcView.search({query:?});
    out.searchShown = shown(hit);
    out.details = document.getElementById('details').textContent.indexOf({query:?}) >= 0;
    out.afterSearch = overlaps();
    tlcView.open({block:?}, false);
    out.closedAgain = !shown(tlcView.box({node:?}));
    out.afterClose = overlaps();
    tlcView.open({block:?});
    tlcView.search({query:?});
  }} catch (e) {{ out.errors.push('test script: ' + e); }}
  var pre = document.createElement('pre');
  pre.id = 'test-out';
  pre.style.display = 'none';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
}})();
</script>"#
    )
}

/// The recorded JSON from a dumped DOM.
fn results(dom: &str) -> serde_json::Value {
    let tag = dom.find("<pre id=\"test-out\"").expect("the test script ran and wrote its results");
    let start = tag + dom[tag..].find('>').expect("end of the tag") + 1;
    let end = start + dom[start..].find("</pre>").expect("end of results");
    let text = dom[start..end].replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"").replace("&amp;", "&");
    serde_json::from_str(&text).expect("results are JSON")
}

fn check_viewer(bin: &Path, spec: &str, variant: Option<&str>, opts: DrawOptions, probe: (&str, &str, &str), name: &str) -> PathBuf {
    let c = compile(spec, &RootLoader, &Options { variant: variant.map(str::to_string) });
    let g = c.graph.expect("the spec compiles");
    let html = draw::html(&g, &c.sources, &opts);
    let work = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("viewer");
    std::fs::create_dir_all(&work).unwrap();
    let page = work.join(format!("{name}.html"));
    let (block, node, query) = probe;
    let instrumented = html.replacen("<head>", &format!("<head>{HEAD_HOOK}"), 1).replacen("</body>", &format!("{}</body>", test_script(block, node, query)), 1);
    std::fs::write(&page, instrumented).unwrap();
    let (dom, log) = run_chromium(bin, &work, &page, &["--dump-dom"]);
    let r = results(&dom);
    let what = format!("{name}: {r}");
    assert_eq!(r["errors"], serde_json::json!([]), "{what}");
    assert!(!log.contains("Uncaught"), "{name}: console errors:\n{log}");
    assert_eq!(r["nodeHiddenBefore"], true, "{what}");
    assert_eq!(r["opened"], true, "{what}");
    assert_eq!(r["nodeShownAfter"], true, "{what}");
    assert_eq!(r["searchShown"], true, "{what}");
    assert_eq!(r["details"], true, "{what}");
    assert_eq!(r["closedAgain"], true, "{what}");
    for stage in ["initial", "afterOpen", "afterSearch", "afterClose"] {
        assert_eq!(r[stage]["bad"], serde_json::json!([]), "{what}: overlaps at {stage}");
        assert!(r[stage]["boxes"].as_u64().unwrap_or(0) > 5, "{what}: boxes at {stage}");
    }
    let shot = work.join(format!("{name}.png"));
    let _ = std::fs::remove_file(&shot);
    let screenshot = format!("--screenshot={}", shot.display());
    run_chromium(bin, &work, &page, &[screenshot.as_str(), "--hide-scrollbars"]);
    let png = std::fs::read(&shot).expect("chromium wrote the screenshot");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "{name}: screenshot of {} bytes", png.len());
    println!("screenshot: {}", shot.display());
    shot
}

#[test]
fn viewer_opens_blocks_searches_and_renders_in_chromium() {
    let Some(bin) = chromium() else {
        println!("skipped: chromium is not installed (apt-get install -y chromium)");
        eprintln!("skipped: chromium is not installed (apt-get install -y chromium)");
        return;
    };
    check_viewer(&bin, "specs/resnet50.yaml", None, DrawOptions::default(), ("layer2.1", "layer2.1.conv2", "layer3.4.bn1"), "resnet50");
    let lr = DrawOptions { depth: 2, direction: Direction::LeftRight, shapes: true };
    check_viewer(&bin, "specs/yolov8.yaml", Some("n"), lr, ("model.9.cv1", "model.9.cv1.conv", "model.21.m.0.cv2.conv"), "yolov8n_lr");
}
