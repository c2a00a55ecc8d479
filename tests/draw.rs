//! `tlc draw` and `tlc view`: golden SVGs for a few small specs, geometric invariants of the
//! pictures of every zoo spec and variant (depth 1 and 2, both directions), PNG and HTML
//! output, and the command line.
//!
//! Accept new snapshots with `INSTA_UPDATE=always cargo test --release --test draw`.

mod common;

use std::collections::HashSet;
use std::process::Command;
use tlc_compiler::draw::picture::{Attach, Picture, Rect, Seg};
use tlc_compiler::draw::{self, Direction, DrawOptions};
use tlc_compiler::ir::Graph;
use tlc_compiler::span::SourceLoader;
use tlc_compiler::{compile, render, Options};

/// Reads files relative to the repository root (machine-independent names in the output).
struct RootLoader;

impl SourceLoader for RootLoader {
    fn load(&self, path: &str) -> Result<String, String> {
        std::fs::read_to_string(common::root().join(path)).map_err(|e| e.kind().to_string())
    }
}

fn compiled(rel: &str, variant: Option<&str>) -> (Graph, tlc_compiler::span::Sources) {
    let c = compile(rel, &RootLoader, &Options { variant: variant.map(str::to_string) });
    match c.graph {
        Some(g) => (g, c.sources),
        None => panic!("{rel} does not compile:\n{}", render::render_plain(&c.diagnostics, &c.sources)),
    }
}

/// Every zoo spec with a graph, with each of its variants (`None`: the default).
fn zoo() -> Vec<(String, Option<String>)> {
    let mut specs: Vec<String> = std::fs::read_dir(common::root().join("specs"))
        .expect("specs/")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .filter(|n| std::fs::read_to_string(common::root().join("specs").join(n)).unwrap_or_default().lines().any(|l| l.starts_with("graph:")))
        .map(|n| format!("specs/{n}"))
        .collect();
    specs.sort();
    let mut out = Vec::new();
    for rel in specs {
        out.push((rel.clone(), None));
        for v in tlc_compiler::variants(&rel, &RootLoader) {
            out.push((rel.clone(), Some(v)));
        }
    }
    out
}

const EPS: f64 = 0.01;

fn overlap(a: &Rect, b: &Rect) -> bool {
    a.x < b.x + b.w - EPS && b.x < a.x + a.w - EPS && a.y < b.y + b.h - EPS && b.y < a.y + a.h - EPS
}

fn contains(outer: &Rect, inner: &Rect) -> bool {
    inner.x >= outer.x - EPS && inner.y >= outer.y - EPS && inner.x + inner.w <= outer.x + outer.w + EPS && inner.y + inner.h <= outer.y + outer.h + EPS
}

fn strictly_inside(r: &Rect, (x, y): (f64, f64), margin: f64) -> bool {
    x > r.x + margin && x < r.x + r.w - margin && y > r.y + margin && y < r.y + r.h - margin
}

fn on_border(r: &Rect, (x, y): (f64, f64)) -> bool {
    let within_x = x >= r.x - EPS && x <= r.x + r.w + EPS;
    let within_y = y >= r.y - EPS && y <= r.y + r.h + EPS;
    let on_x = (x - r.x).abs() < EPS || (x - r.x - r.w).abs() < EPS;
    let on_y = (y - r.y).abs() < EPS || (y - r.y - r.h).abs() < EPS;
    (within_x && on_y) || (within_y && on_x)
}

/// Points along a path: segment ends, and samples of lines and curves.
fn samples(path: &[Seg]) -> Vec<(f64, f64)> {
    let mut out = Vec::new();
    let mut at = (0.0, 0.0);
    for s in path {
        match *s {
            Seg::Move(x, y) => at = (x, y),
            Seg::Line(x, y) => {
                for i in 1..=8 {
                    let t = i as f64 / 8.0;
                    out.push((at.0 + (x - at.0) * t, at.1 + (y - at.1) * t));
                }
                at = (x, y);
            }
            Seg::Curve(a, b, c, d, x, y) => {
                for i in 1..=16 {
                    let t = i as f64 / 16.0;
                    let u = 1.0 - t;
                    let px = u * u * u * at.0 + 3.0 * u * u * t * a + 3.0 * u * t * t * c + t * t * t * x;
                    let py = u * u * u * at.1 + 3.0 * u * u * t * b + 3.0 * u * t * t * d + t * t * t * y;
                    out.push((px, py));
                }
                at = (x, y);
            }
        }
    }
    out
}

/// The geometric invariants of a picture; returns the problems found.
fn check_picture(g: &Graph, pic: &Picture) -> Vec<String> {
    let mut problems = Vec::new();
    let bounds = Rect { x: 0.0, y: 0.0, w: pic.width, h: pic.height };
    // Every node drawn once.
    let mut drawn = vec![0usize; g.graph.node_count()];
    for b in &pic.boxes {
        for n in &b.nodes {
            drawn[n.index()] += 1;
        }
    }
    for (i, n) in g.nodes() {
        if drawn[i.index()] != 1 {
            problems.push(format!("node `{}` is drawn {} times", n.name, drawn[i.index()]));
        }
    }
    // Boxes and labels: inside the picture, never overlapping each other.
    let mut rects: Vec<(String, Rect)> = Vec::new();
    for b in &pic.boxes {
        rects.push((b.id.clone(), b.rect));
        if let Some(l) = &b.label {
            rects.push((format!("label of {}", b.id), l.rect));
        }
    }
    for (i, (na, a)) in rects.iter().enumerate() {
        if !contains(&bounds, a) {
            problems.push(format!("{na} {a:?} is outside the picture"));
        }
        for (nb, b) in &rects[i + 1..] {
            if overlap(a, b) {
                problems.push(format!("{na} {a:?} overlaps {nb} {b:?}"));
            }
        }
        for c in &pic.clusters {
            if overlap(a, &c.rect) && !contains(&c.rect, a) {
                problems.push(format!("{na} crosses the frame of instance {}", c.scope));
            }
        }
    }
    for (i, a) in pic.clusters.iter().enumerate() {
        for b in &pic.clusters[i + 1..] {
            if overlap(&a.rect, &b.rect) && !contains(&a.rect, &b.rect) && !contains(&b.rect, &a.rect) {
                problems.push(format!("frames of instances {} and {} overlap", a.scope, b.scope));
            }
        }
    }
    let rect_of = |a: &Attach| -> Rect {
        match a {
            Attach::Box(id) => pic.boxes.iter().find(|b| &b.id == id).map(|b| b.rect).expect("edge end names a box"),
            Attach::Cluster(s) => pic.clusters.iter().find(|c| c.scope == *s).map(|c| c.rect).expect("edge end names a frame"),
        }
    };
    for e in &pic.edges {
        let start = e.path.first().map(|s| s.end()).unwrap_or_default();
        let end = e.path.last().map(|s| s.end()).unwrap_or_default();
        let (from, to) = (rect_of(&e.from), rect_of(&e.to));
        if !on_border(&from, start) {
            problems.push(format!("an edge starts at {start:?}, off {:?} {from:?}", e.from));
        }
        if !on_border(&to, end) {
            problems.push(format!("an edge ends at {end:?}, off {:?} {to:?}", e.to));
        }
        // Edges run through no box, and stay out of frames other than their own instance's.
        let frame = pic.clusters.iter().find(|c| c.scope == e.scope).map(|c| c.rect).unwrap_or(bounds);
        for p in samples(&e.path) {
            if let Some(b) = pic.boxes.iter().find(|b| strictly_inside(&b.rect, p, 0.5)) {
                problems.push(format!("an edge from {:?} to {:?} runs through box {} at {p:?}", e.from, e.to, b.id));
                break;
            }
            if let Some(c) = pic.clusters.iter().find(|c| c.scope != e.scope && strictly_inside(&c.rect, p, 0.5) && !contains(&c.rect, &frame)) {
                problems.push(format!("an edge of instance {} runs through the frame of instance {}", e.scope, c.scope));
                break;
            }
        }
    }
    problems
}

/// The SVG parses, and has a group per box and a path per edge.
fn check_svg(svg: &str, pic: &Picture) -> Vec<String> {
    let doc = match roxmltree::Document::parse(svg) {
        Ok(d) => d,
        Err(e) => return vec![format!("the SVG does not parse: {e}")],
    };
    let mut problems = Vec::new();
    let boxes: HashSet<&str> = doc.descendants().filter(|n| n.attribute("class") == Some("box")).filter_map(|n| n.attribute("id")).collect();
    if boxes.len() != pic.boxes.len() {
        problems.push(format!("the SVG has {} boxes, the picture {}", boxes.len(), pic.boxes.len()));
    }
    let edges = doc.descendants().filter(|n| n.attribute("class") == Some("edge")).count();
    if edges != pic.edges.len() {
        problems.push(format!("the SVG has {edges} edges, the picture {}", pic.edges.len()));
    }
    problems
}

fn options(depth: usize, direction: Direction, shapes: bool) -> DrawOptions {
    DrawOptions { depth, direction, shapes }
}

#[test]
fn every_zoo_picture_is_well_formed() {
    let zoo = zoo();
    assert!(zoo.len() > 20, "the zoo has {} specs and variants", zoo.len());
    let mut failures = Vec::new();
    for (rel, variant) in &zoo {
        let (g, _) = compiled(rel, variant.as_deref());
        for depth in [1, 2] {
            for (direction, shapes) in [(Direction::TopBottom, true), (Direction::LeftRight, true), (Direction::TopBottom, false)] {
                let opts = options(depth, direction, shapes);
                let pic = draw::picture(&g, &opts);
                let svg = draw::svg(&g, &opts);
                let mut problems = check_picture(&g, &pic);
                problems.extend(check_svg(&svg, &pic));
                if !problems.is_empty() {
                    problems.truncate(5);
                    failures.push(format!("{rel} {variant:?} depth {depth} {direction:?} shapes {shapes}:\n  {}", problems.join("\n  ")));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_checks_catch_overlapping_boxes_and_loose_edges() {
    let (g, _) = compiled("specs/resnet50.yaml", None);
    let pic = draw::picture(&g, &options(2, Direction::TopBottom, true));
    assert_eq!(check_picture(&g, &pic), Vec::<String>::new());
    let mut moved = pic.clone();
    moved.boxes[1].rect = moved.boxes[2].rect;
    assert!(check_picture(&g, &moved).iter().any(|p| p.contains("overlaps")));
    let mut loose = pic.clone();
    if let Some(Seg::Move(_, y)) = loose.edges[0].path.first_mut() {
        *y += 3.0;
    }
    assert!(check_picture(&g, &loose).iter().any(|p| p.contains("an edge starts")));
    let mut twice = pic.clone();
    let first = twice.boxes[0].clone();
    twice.boxes.push(first);
    assert!(check_picture(&g, &twice).iter().any(|p| p.contains("drawn 2 times")));
    let mut through = pic;
    let target = through.boxes[5].rect;
    through.edges[0].path.push(Seg::Line(target.x + target.w / 2.0, target.y + target.h / 2.0));
    assert!(check_picture(&g, &through).iter().any(|p| p.contains("runs through box")));
}

#[test]
fn deeper_pictures_open_blocks_into_frames() {
    let (g, _) = compiled("specs/resnet50.yaml", None);
    let boxes = |depth| draw::picture(&g, &options(depth, Direction::TopBottom, false));
    let (one, two, all) = (boxes(1), boxes(2), boxes(99));
    assert!(one.clusters.is_empty(), "depth 1 draws every top-level block as one box");
    assert_eq!(one.boxes.iter().filter(|b| b.text.block).count(), 4, "layer1..layer4");
    assert_eq!(two.clusters.len(), 4);
    assert_eq!(two.boxes.iter().filter(|b| b.text.block).count(), 16, "3 + 4 + 6 + 3 bottlenecks");
    assert_eq!(all.boxes.len(), g.graph.node_count(), "full depth draws every node");
    assert!(all.boxes.iter().all(|b| !b.text.block));
}

#[test]
fn resnet50_left_to_right_at_depth_one_fits_a_screen() {
    let (g, _) = compiled("specs/resnet50.yaml", None);
    let pic = draw::picture(&g, &options(1, Direction::LeftRight, true));
    assert!(pic.width <= 1920.0 && pic.height <= 1080.0, "{} x {}", pic.width, pic.height);
}

#[test]
fn golden_svgs() {
    let cases: [(&str, Option<&str>, DrawOptions, &str); 3] = [
        ("specs/alexnet.yaml", None, options(1, Direction::TopBottom, true), "draw__alexnet"),
        ("specs/resnet50.yaml", None, options(2, Direction::LeftRight, false), "draw__resnet50_depth2_lr"),
        ("specs/yolov8.yaml", Some("n"), options(1, Direction::TopBottom, true), "draw__yolov8n"),
    ];
    for (rel, variant, opts, name) in cases {
        let (g, _) = compiled(rel, variant);
        let mut settings = insta::Settings::clone_current();
        settings.set_description(format!("{rel} {opts:?}"));
        settings.set_omit_expression(true);
        settings.set_prepend_module_to_snapshot(false);
        settings.bind(|| insta::assert_snapshot!(name, draw::svg(&g, &opts)));
    }
}

#[test]
fn png_is_the_svg_at_twice_the_size() {
    let (g, _) = compiled("specs/alexnet.yaml", None);
    let opts = options(1, Direction::TopBottom, true);
    let pic = draw::picture(&g, &opts);
    let png = draw::png(&g, &opts).expect("png");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let w = u32::from_be_bytes(png[16..20].try_into().unwrap());
    let h = u32::from_be_bytes(png[20..24].try_into().unwrap());
    assert_eq!((w, h), ((pic.width * 2.0).ceil() as u32, (pic.height * 2.0).ceil() as u32));
}

#[test]
fn viewer_pages_are_self_contained_and_carry_every_node() {
    for (rel, variant) in zoo().into_iter().filter(|(_, v)| v.is_none()) {
        let (g, sources) = compiled(&rel, None);
        let html = draw::html(&g, &sources, &DrawOptions::default());
        for bad in ["https://", "src=\"", "href=\"http", "@import", "url(http"] {
            assert!(!html.contains(bad), "{rel} {variant:?}: the page refers outside itself (`{bad}`)");
        }
        let start = html.find("id=\"tlc-data\">").expect("data") + "id=\"tlc-data\">".len();
        let end = start + html[start..].find("</script>").expect("end of data");
        let data: serde_json::Value = serde_json::from_str(&html[start..end].replace("<\\/", "</")).expect("the data is JSON");
        assert_eq!(data["nodes"].as_array().map(|a| a.len()), Some(g.graph.node_count()), "{rel}");
        for i in 0..g.graph.node_count() {
            assert!(html.contains(&format!("<g id=\"n{i}\" ")), "{rel}: no box for node {i}");
        }
        let line = data["nodes"][1]["line"].as_i64().expect("spec line index");
        let at = data["lines"][line as usize][0].as_str().unwrap_or("");
        assert!(at.starts_with("specs/") && at.contains(".yaml:"), "{rel}: spec line {:?}", data["lines"][line as usize]);
    }
}

fn tlc(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tlc")).args(args).current_dir(common::root()).output().expect("run tlc")
}

#[test]
fn command_line_writes_svg_png_and_html() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("draw-cli");
    std::fs::create_dir_all(&dir).unwrap();
    let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let out = tlc(&["draw", "specs/resnet50.yaml", "-o", &path("r.svg"), "--depth", "2", "--rankdir", "LR", "--shapes"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::read_to_string(path("r.svg")).unwrap().starts_with("<svg "));
    let out = tlc(&["draw", "specs/yolov8.yaml", "--variant", "n", "-o", &path("y.png")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::read(path("y.png")).unwrap().starts_with(b"\x89PNG"));
    let out = tlc(&["view", "specs/resnet50.yaml", "-o", &path("r.html")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::read_to_string(path("r.html")).unwrap().starts_with("<!DOCTYPE html>"));
    let out = tlc(&["draw", "specs/resnet50.yaml", "-o", &path("r.gif")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains(".svg or .png"));
    let out = tlc(&["draw", "specs/resnet50.yaml", "-o", &path("r.svg"), "--depth", "0"]);
    assert_eq!(out.status.code(), Some(2), "depth 0 is refused by the argument parser");
}
