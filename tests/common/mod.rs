//! Helpers shared by the integration tests: compiling specs from disk and finding fixtures.
#![allow(dead_code)]

pub mod http;

use std::path::{Path, PathBuf};
use tlc_compiler::ir::Graph;
use tlc_compiler::span::SourceLoader;
use tlc_compiler::{compile, render, Options};

/// Reads spec files from disk.
pub struct Disk;

impl SourceLoader for Disk {
    fn load(&self, path: &str) -> Result<String, String> {
        std::fs::read_to_string(path).map_err(|e| e.to_string())
    }
}

/// Repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Set to `1` to skip the tests that need `../shared` (they pass with a note) instead of
/// failing them; nothing else skips them.
pub const SKIP_SHARED: &str = "TLC_SKIP_SHARED";

/// `../shared` beside the repository (see [`shared_path`]).
pub fn shared() -> Option<PathBuf> {
    shared_path("")
}

/// `../shared/<rel>` beside the repository, which the calling test needs: `Some` when it
/// exists; when it does not, a failure that says where to get it, or `None` (the test returns,
/// saying it skipped) when the run opted out with `TLC_SKIP_SHARED=1`.
pub fn shared_path(rel: &str) -> Option<PathBuf> {
    let p = root().join("../shared").join(rel);
    require_shared(p, std::env::var(SKIP_SHARED).is_ok_and(|v| v == "1"))
}

/// [`shared_path`]'s rule for a path `p` and the opt-out `skip`.
pub fn require_shared(p: PathBuf, skip: bool) -> Option<PathBuf> {
    if p.exists() {
        return Some(p);
    }
    if skip {
        eprintln!("skipped ({SKIP_SHARED}=1): {} is missing", p.display());
        return None;
    }
    panic!(
        "this test needs {}: ../shared beside the repository holds the parity fixtures and real assets every \
         developer and CI run have (shared/README.md; fixtures regenerate with shared/parity/make_fixtures.py, \
         assets are listed with their sources in shared/assets/PROVENANCE.md). Put it there, or set {SKIP_SHARED}=1 \
         to skip the tests that need it.",
        p.display()
    )
}

/// Each parity fixture and the spec (and variant) that must match it.
pub const FIXTURES: &[(&str, &str, Option<&str>)] = &[
    ("alexnet", "specs/alexnet.yaml", None),
    ("vgg16", "specs/vgg16.yaml", None),
    ("vgg19", "specs/vgg19.yaml", None),
    ("resnet50", "specs/resnet50.yaml", None),
    ("densenet121", "specs/densenet121.yaml", None),
    ("densenet201", "specs/densenet201.yaml", None),
    ("mobilenetv1_100", "specs/mobilenet.yaml", None),
    ("mobilenet_v2", "specs/mobilenet_v2.yaml", None),
    ("inception_v3", "specs/inception_v3.yaml", Some("no_aux_raw")),
    ("legacy_xception", "specs/xception.yaml", None),
    ("efficientnet_b0", "specs/efficientnet_b0.yaml", None),
    ("efficientnet_b4", "specs/efficientnet_b4.yaml", None),
    ("convnext_tiny", "specs/convnext_tiny.yaml", None),
    ("convnext_base", "specs/convnext_base.yaml", None),
    ("vit_b_16", "specs/vit_b_16.yaml", None),
    ("swin_t", "specs/swin_t.yaml", None),
    ("yolov8n", "specs/yolov8.yaml", Some("n")),
];

/// Compiles a spec (path relative to the repository root), panicking with rendered diagnostics.
pub fn compile_spec(rel: &str, variant: Option<&str>) -> Graph {
    let path = root().join(rel);
    let c = compile(path.to_str().unwrap(), &Disk, &Options { variant: variant.map(|s| s.to_string()) });
    match c.graph {
        Some(g) => g,
        None => panic!("{rel} does not compile:\n{}", render::render_plain(&c.diagnostics, &c.sources)),
    }
}

/// `(name, shape)` list of a fixture manifest, without non-formula buffers.
pub fn manifest_params(dir: &Path) -> Vec<(String, Vec<usize>)> {
    let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    let skip: Vec<String> = m["not_from_formula"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    m["params"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_str().unwrap().to_string(), p[1].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect()))
        .filter(|(n, _): &(String, Vec<usize>)| !skip.contains(n))
        .collect()
}
