//! The `weights:` header: where a spec's pretrained checkpoint comes from and how to check it.
//!
//! ```yaml
//! weights:                       # one checkpoint for the spec
//!   url: https://host/models/resnet50-11ad3fa6.pth
//!   sha256: 11ad3fa6             # full hash, or the prefix torchvision puts in file names
//! weights:                       # or one per variant (`default`: no variant chosen)
//!   n: {url: https://host/yolov8n.pt, sha256: unpublished}
//! weights: my-model.safetensors  # or just a file name, looked up locally
//! ```
//!
//! The compiler only reads and checks these values; finding, downloading and verifying the file
//! is the runtime's job (`tlc_runtime::hub`).

use crate::diag::{did_you_mean, Diagnostic};
use crate::spec::Spec;
use crate::yaml::{Kind, Node};
use serde::Serialize;

/// A pretrained checkpoint named by a spec.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Checkpoint {
    /// File name in caches and mirrors (default: the last segment of the first URL).
    pub file: String,
    /// Upstream download addresses, tried in order (empty when only a package ships the file).
    pub urls: Vec<String>,
    /// What upstream publishes to check the file with.
    pub sha256: Hash,
    /// Size in bytes, when known.
    pub size: Option<u64>,
    /// Storage format; `None`: recognised from the file's content and extension.
    pub format: Option<Format>,
    /// The package (name and version) that ships the file, when it is published only that way.
    pub package: Option<String>,
    /// Key renames applied on load, as `(old substring, new substring)` (old checkpoints).
    pub rename: Vec<(String, String)>,
    /// Key prefixes dropped on load (parts of the reference the chosen variant leaves out).
    pub drop: Vec<String>,
}

/// The hash a checkpoint is checked against.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Hash {
    /// The full sha256, lowercase hex.
    Sha256(String),
    /// A prefix of the sha256 (torchvision names its files `<name>-<prefix>.pth`).
    Prefix(String),
    /// Upstream publishes no hash: size and format are checked instead.
    Unpublished,
}

impl Hash {
    /// Whether a lowercase hex sha256 digest satisfies this hash.
    pub fn accepts(&self, digest: &str) -> bool {
        match self {
            Hash::Sha256(h) => h == digest,
            Hash::Prefix(p) => digest.starts_with(p.as_str()),
            Hash::Unpublished => true,
        }
    }
}

/// Checkpoint storage formats that tlc reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Format {
    /// `.safetensors`.
    Safetensors,
    /// A PyTorch state dict (`.pth`, `.pt`, `.bin`).
    Pytorch,
    /// A darknet `.weights` file (tensors in the order of the spec's darknet layer indices).
    Darknet,
    /// An Ultralytics `.pt` (a pickled full model).
    Ultralytics,
}

const FORMATS: &[(&str, Format)] =
    &[("safetensors", Format::Safetensors), ("pytorch", Format::Pytorch), ("darknet", Format::Darknet), ("ultralytics", Format::Ultralytics)];

const SOURCE_KEYS: &[&str] = &["file", "url", "sha256", "size", "format", "package", "rename", "drop"];

/// Reads the `weights:` header for the chosen variant (`None`: no variant).
pub fn read(n: &Node, spec: &Spec, variant: Option<&str>, diags: &mut Vec<Diagnostic>) -> Option<Checkpoint> {
    match &n.kind {
        Kind::Null => None,
        Kind::Str(s) => Some(Checkpoint::local(s.clone())),
        Kind::Map(entries) if entries.iter().any(|(k, _)| k.as_str().is_some_and(|k| SOURCE_KEYS.contains(&k))) => source(n, entries, diags),
        Kind::Map(entries) => per_variant(entries, spec, variant, diags),
        _ => {
            diags.push(err(n, format!("`weights` must be a file name or a mapping, found {}", n.type_name())));
            None
        }
    }
}

impl Checkpoint {
    /// A checkpoint known only by its file name (no upstream).
    pub fn local(file: String) -> Checkpoint {
        Checkpoint { file, urls: vec![], sha256: Hash::Unpublished, size: None, format: None, package: None, rename: vec![], drop: vec![] }
    }
}

fn err(n: &Node, msg: impl Into<String>) -> Diagnostic {
    Diagnostic::error("E0029", n.span, msg)
}

/// `{n: {...}, s: {...}}`: picks the chosen variant's entry; each key must be a variant.
fn per_variant(entries: &[(Node, Node)], spec: &Spec, variant: Option<&str>, diags: &mut Vec<Diagnostic>) -> Option<Checkpoint> {
    let names: Vec<&str> = spec.variants.iter().map(|(n, _, _)| n.as_str()).chain(["default"]).collect();
    let mut chosen = None;
    for (k, v) in entries {
        let key = k.scalar_text().unwrap_or_default();
        if !names.contains(&key.as_str()) {
            let hint = did_you_mean(&key, names.iter().copied());
            diags.push(
                err(k, format!("`weights` has an entry for `{key}`, which is neither a variant nor `default`"))
                    .label("not a variant")
                    .maybe_hint(hint)
                    .hint(format!("a checkpoint's keys are {}; per-variant entries are keyed by {}", SOURCE_KEYS.join(", "), names.join(", "))),
            );
            continue;
        }
        // Every entry is checked, the chosen one is kept.
        let parsed = read_entry(v, spec, diags);
        if key == variant.unwrap_or("default") {
            chosen = parsed;
        }
    }
    chosen
}

fn read_entry(v: &Node, spec: &Spec, diags: &mut Vec<Diagnostic>) -> Option<Checkpoint> {
    match &v.kind {
        Kind::Map(e) if !e.is_empty() && e.iter().all(|(k, _)| k.as_str().is_some_and(|k| SOURCE_KEYS.contains(&k))) => source(v, e, diags),
        Kind::Map(_) => {
            diags.push(err(v, "a variant's `weights` entry must be a checkpoint (url, file, sha256, ...) or `null`"));
            None
        }
        _ => read(v, spec, None, diags),
    }
}

/// One checkpoint mapping.
fn source(n: &Node, entries: &[(Node, Node)], diags: &mut Vec<Diagnostic>) -> Option<Checkpoint> {
    let mut c = Checkpoint::local(String::new());
    let mut file = None;
    let mut hash = None;
    let mut hash_given = false;
    for (k, v) in entries {
        let key = k.scalar_text().unwrap_or_default();
        match key.as_str() {
            "file" => file = text(v, "file", diags),
            "url" => c.urls = texts(v, "url", diags),
            "sha256" => (hash, hash_given) = (sha256(v, diags), true),
            "size" => c.size = size(v, diags),
            "format" => c.format = format(v, diags),
            "package" => c.package = text(v, "package", diags),
            "rename" => c.rename = renames(v, diags),
            "drop" => c.drop = texts(v, "drop", diags),
            other => diags.push(err(k, format!("unknown `weights` key `{other}`")).maybe_hint(did_you_mean(other, SOURCE_KEYS.iter().copied()))),
        }
    }
    if !c.urls.is_empty() && !hash_given {
        diags.push(err(n, "a checkpoint with a `url` needs `sha256:`").hint("give the full sha256, the prefix in the file name, or `sha256: unpublished` when upstream publishes none"));
    }
    c.sha256 = hash.unwrap_or(Hash::Unpublished);
    c.file = match file.or_else(|| c.urls.first().and_then(|u| last_segment(u))) {
        Some(f) => f,
        None => {
            diags.push(err(n, "a checkpoint needs a `file:` name or a `url:` ending in one"));
            return None;
        }
    };
    if c.file.contains('/') || c.file.contains('\\') || c.file.starts_with('.') {
        diags.push(err(n, format!("`file: {}` must be a plain file name (no folders, not hidden)", c.file)));
        return None;
    }
    Some(c)
}

fn last_segment(url: &str) -> Option<String> {
    let path = url.split(['?', '#']).next()?;
    let seg = path.rsplit('/').next()?;
    (!seg.is_empty() && path.contains("://")).then(|| seg.to_string())
}

fn text(v: &Node, what: &str, diags: &mut Vec<Diagnostic>) -> Option<String> {
    match &v.kind {
        Kind::Str(s) if !s.is_empty() => Some(s.clone()),
        _ => {
            diags.push(err(v, format!("`{what}` must be a non-empty string, found {}", v.type_name())));
            None
        }
    }
}

fn texts(v: &Node, what: &str, diags: &mut Vec<Diagnostic>) -> Vec<String> {
    match &v.kind {
        Kind::Seq(items) => items.iter().filter_map(|i| text(i, what, diags)).collect(),
        _ => text(v, what, diags).into_iter().collect(),
    }
}

fn sha256(v: &Node, diags: &mut Vec<Diagnostic>) -> Option<Hash> {
    let s = v.scalar_text().unwrap_or_default().to_ascii_lowercase();
    if s == "unpublished" {
        return Some(Hash::Unpublished);
    }
    let hex = s.chars().all(|c| c.is_ascii_hexdigit());
    match s.len() {
        64 if hex => Some(Hash::Sha256(s)),
        8..=63 if hex => Some(Hash::Prefix(s)),
        _ => {
            diags.push(err(v, format!("`sha256` must be 64 hex digits, a prefix of at least 8, or `unpublished`; found `{s}`")));
            None
        }
    }
}

fn size(v: &Node, diags: &mut Vec<Diagnostic>) -> Option<u64> {
    match v.kind {
        Kind::Int(i) if i > 0 => Some(i as u64),
        _ => {
            diags.push(err(v, "`size` must be a positive number of bytes"));
            None
        }
    }
}

fn format(v: &Node, diags: &mut Vec<Diagnostic>) -> Option<Format> {
    let s = v.scalar_text().unwrap_or_default();
    let found = FORMATS.iter().find(|(n, _)| *n == s).map(|(_, f)| *f);
    if found.is_none() {
        let names: Vec<&str> = FORMATS.iter().map(|(n, _)| *n).collect();
        diags.push(err(v, format!("unknown weights format `{s}`")).maybe_hint(did_you_mean(&s, names.iter().copied())).hint(format!("formats: {}", names.join(", "))));
    }
    found
}

fn renames(v: &Node, diags: &mut Vec<Diagnostic>) -> Vec<(String, String)> {
    let Kind::Map(entries) = &v.kind else {
        diags.push(err(v, "`rename` maps old key parts to new ones, e.g. `{.norm.1.: .norm1.}`"));
        return vec![];
    };
    entries.iter().filter_map(|(k, v)| Some((text(k, "rename", diags)?, text(v, "rename", diags)?))).collect()
}
