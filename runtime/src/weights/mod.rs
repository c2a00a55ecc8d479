//! Loading, checking and saving network weights.
//!
//! [`Weights::load`] reads `.safetensors` and PyTorch checkpoints (`.pth`, `.pt`, `.bin`, zip or
//! legacy format, never executing pickled code: `pickle.rs` is a data-only pickle machine) into
//! f32 CPU tensors. PyTorch checkpoints may hold a state dict (possibly nested under a common
//! key) or pickled `nn.Module`s (`torch.save(model)`), such as Ultralytics release checkpoints
//! (`yolov8n.pt`: the `ema` or else the `model` module's tree is walked into `state_dict` names,
//! fp16 converted to f32). [`Weights::load_for`] also reads darknet
//! `.weights` files, which carry no names: the network's expected parameter list gives their
//! layout. [`Weights::check`] compares weights with the parameter list a compiled network
//! expects; [`save_safetensors`] writes atomically. Which file a command loads is decided
//! in `crate::pretrained` (through `crate::hub`).

mod darknet;
mod format;
mod pickle;
mod pth;
#[cfg(test)]
mod tests;

pub use format::check_format;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::Path;

/// Tensors read from a file: `(name, shape, f32 data)`.
pub(crate) type Parsed = Vec<(String, Vec<usize>, Vec<f32>)>;

/// Element type of stored data, converted to f32 on load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Elem {
    F16,
    BF16,
    F32,
    F64,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl Elem {
    pub(crate) fn size(self) -> usize {
        match self {
            Elem::F64 | Elem::I64 => 8,
            Elem::F32 | Elem::I32 => 4,
            Elem::F16 | Elem::BF16 | Elem::I16 => 2,
            Elem::I8 | Elem::U8 | Elem::Bool => 1,
        }
    }

    /// Little-endian bytes to f32.
    pub(crate) fn to_f32(self, b: &[u8]) -> Result<Vec<f32>> {
        let es = self.size();
        if !b.len().is_multiple_of(es) {
            bail!("data length {} is not a multiple of the element size {es}", b.len());
        }
        let c = b.chunks_exact(es);
        Ok(match self {
            Elem::F32 => c.map(|x| f32::from_le_bytes(x.try_into().unwrap())).collect(),
            Elem::F64 => c.map(|x| f64::from_le_bytes(x.try_into().unwrap()) as f32).collect(),
            Elem::F16 => c.map(|x| half::f16::from_le_bytes(x.try_into().unwrap()).to_f32()).collect(),
            Elem::BF16 => c.map(|x| half::bf16::from_le_bytes(x.try_into().unwrap()).to_f32()).collect(),
            Elem::I64 => c.map(|x| i64::from_le_bytes(x.try_into().unwrap()) as f32).collect(),
            Elem::I32 => c.map(|x| i32::from_le_bytes(x.try_into().unwrap()) as f32).collect(),
            Elem::I16 => c.map(|x| i16::from_le_bytes(x.try_into().unwrap()) as f32).collect(),
            Elem::I8 => c.map(|x| x[0] as i8 as f32).collect(),
            Elem::U8 | Elem::Bool => c.map(|x| x[0] as f32).collect(),
        })
    }
}

/// Named f32 tensors on the CPU, sorted by name.
#[derive(Clone, Debug, Default)]
pub struct Weights {
    tensors: BTreeMap<String, Tensor>,
}

/// Names ending like this are bookkeeping, not weights, and are ignored by [`Weights::check`].
const IGNORED_SUFFIX: &str = "num_batches_tracked";

impl Weights {
    /// Loads a `.safetensors` file or a PyTorch state dict (`.pth`, `.pt`, `.bin`, `.ckpt`).
    ///
    /// The format is recognised by content, not extension. PyTorch pickles are parsed as data
    /// only; a state dict nested under a common key (`state_dict`, `model`, ...) is found, and
    /// a pickled `nn.Module` (Ultralytics checkpoints: `ema`, else `model`) gives the names and
    /// tensors of its `state_dict()`. Darknet `.weights` files need [`Weights::load_for`].
    /// Every tensor is converted to f32. A corrupt, truncated or foreign file gives an error
    /// naming the file.
    pub fn load(path: &Path) -> Result<Weights> {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read weights file {}", path.display()))?;
        Weights::from_bytes(path, &bytes)
    }

    /// Loads weights for a network whose `(name, shape)` list (as [`Weights::check`] takes it)
    /// is `expected`.
    ///
    /// A file named `*.weights` is read as darknet weights (darknet files have no magic number,
    /// so the extension decides; one that is recognisably a safetensors or PyTorch file is read
    /// as such): the tensors are laid out in the order of the darknet layer index `i` of the
    /// `layers.<i>.conv.*` / `layers.<i>.bn.*` names of `expected`, with its shapes. A short
    /// file, trailing bytes, a bad header, or an `expected` list with other names give a one-line
    /// error naming the file. Any other file goes to [`Weights::load`].
    pub fn load_for(path: &Path, expected: &[(String, Vec<usize>)]) -> Result<Weights> {
        let is_darknet = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("weights"));
        if !is_darknet {
            return Weights::load(path);
        }
        let bytes = std::fs::read(path).with_context(|| format!("cannot read weights file {}", path.display()))?;
        if sniff(&bytes) == Some(Sniffed::Pth) || safetensors_header_fits(&bytes) {
            return Weights::from_bytes(path, &bytes);
        }
        let list = darknet::read(&bytes, expected)
            .map_err(|e| anyhow!("cannot load darknet weights from {}: {e:#}", path.display()))?;
        Weights::from_list(path, list)
    }

    /// Parses a file's content (any format [`Weights::load`] knows), errors naming `path`.
    fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Weights> {
        let parsed = std::panic::catch_unwind(|| parse(bytes)).unwrap_or_else(|p| {
            let msg = p
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| p.downcast_ref::<&str>().copied())
                .unwrap_or("unknown panic");
            Err(anyhow!("decoder panicked: {msg}"))
        });
        let list = parsed.with_context(|| format!("cannot load weights from {}", path.display()))?;
        Weights::from_list(path, list)
    }

    /// Builds CPU tensors from parsed `(name, shape, data)` entries of the file at `path`.
    fn from_list(path: &Path, list: Parsed) -> Result<Weights> {
        let mut tensors = BTreeMap::new();
        for (name, shape, data) in list {
            let t = Tensor::from_vec(data, shape, &Device::Cpu)
                .with_context(|| format!("cannot load weights from {}: tensor {name}", path.display()))?;
            tensors.insert(name, t);
        }
        Ok(Weights { tensors })
    }

    /// Builds weights from named tensors (converted to f32 on the CPU).
    pub fn from_tensors<I, S>(tensors: I) -> Result<Weights>
    where
        I: IntoIterator<Item = (S, Tensor)>,
        S: Into<String>,
    {
        let mut map = BTreeMap::new();
        for (name, t) in tensors {
            let name = name.into();
            let t = t.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
            map.insert(name, t);
        }
        Ok(Weights { tensors: map })
    }

    /// The tensor called `name`.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }

    /// All tensor names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether there are no tensors.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Iterates over `(name, tensor)`, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.tensors.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Total number of scalar parameters (all tensors, `num_batches_tracked` excluded).
    pub fn num_parameters(&self) -> usize {
        self.tensors
            .iter()
            .filter(|(k, _)| !k.ends_with(IGNORED_SUFFIX))
            .map(|(_, t)| t.elem_count())
            .sum()
    }

    /// Removes and returns the tensor called `name`.
    pub fn remove(&mut self, name: &str) -> Option<Tensor> {
        self.tensors.remove(name)
    }

    /// Compares with the expected `(name, shape)` list. Strict by default: every missing,
    /// unexpected and mis-shaped tensor is reported at once. With `allow_missing`, missing
    /// tensors are tolerated (unexpected and mis-shaped ones still fail). Names ending in
    /// `num_batches_tracked` are ignored on both sides.
    pub fn check(&self, expected: &[(String, Vec<usize>)], allow_missing: bool) -> Result<(), WeightsMismatch> {
        let mut m = WeightsMismatch::default();
        let mut seen = std::collections::HashSet::new();
        for (name, shape) in expected {
            if name.ends_with(IGNORED_SUFFIX) {
                continue;
            }
            seen.insert(name.as_str());
            match self.tensors.get(name) {
                None => {
                    if !allow_missing {
                        m.missing.push((name.clone(), shape.clone()))
                    }
                }
                Some(t) if t.dims() != shape.as_slice() => {
                    m.mis_shaped.push((name.clone(), shape.clone(), t.dims().to_vec()))
                }
                Some(_) => {}
            }
        }
        for (name, t) in &self.tensors {
            if !name.ends_with(IGNORED_SUFFIX) && !seen.contains(name.as_str()) {
                m.unexpected.push((name.clone(), t.dims().to_vec()));
            }
        }
        if m.missing.is_empty() && m.unexpected.is_empty() && m.mis_shaped.is_empty() {
            Ok(())
        } else {
            Err(m)
        }
    }
}

/// Formats recognised by content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sniffed {
    Pth,
    Safetensors,
}

/// Recognises PyTorch (zip or legacy) and safetensors content.
fn sniff(bytes: &[u8]) -> Option<Sniffed> {
    if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(&[0x80, 0x02, 0x8a, 0x0a]) {
        return Some(Sniffed::Pth);
    }
    // safetensors: 8-byte little-endian header length, then a JSON header starting with '{'.
    (bytes.len() >= 9 && bytes[8] == b'{').then_some(Sniffed::Safetensors)
}

/// Whether `bytes` start with a safetensors header that fits in the file: stricter than
/// [`sniff`], so that a darknet header (version numbers, then `seen`) is never taken for one.
fn safetensors_header_fits(bytes: &[u8]) -> bool {
    let Some(len) = bytes.get(..8).map(|b| u64::from_le_bytes(b.try_into().unwrap())) else { return false };
    sniff(bytes) == Some(Sniffed::Safetensors) && len >= 2 && len <= (bytes.len() - 8) as u64
}

fn parse(bytes: &[u8]) -> Result<Parsed> {
    if bytes.is_empty() {
        bail!("the file is empty");
    }
    match sniff(bytes) {
        Some(Sniffed::Pth) => pth::read(bytes),
        Some(Sniffed::Safetensors) => read_safetensors(bytes),
        None => bail!("unrecognised format: neither safetensors nor a PyTorch checkpoint (zip or legacy pickle)"),
    }
}

fn read_safetensors(bytes: &[u8]) -> Result<Parsed> {
    use safetensors::Dtype as D;
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| anyhow!("invalid safetensors file: {e}"))?;
    let mut out = Vec::new();
    for (name, view) in st.iter() {
        let elem = match view.dtype() {
            D::F32 => Elem::F32,
            D::F16 => Elem::F16,
            D::BF16 => Elem::BF16,
            D::F64 => Elem::F64,
            D::I64 => Elem::I64,
            D::I32 => Elem::I32,
            D::I16 => Elem::I16,
            D::I8 => Elem::I8,
            D::U8 => Elem::U8,
            D::BOOL => Elem::Bool,
            other => bail!("tensor {name}: unsupported dtype {other:?}"),
        };
        let data = elem.to_f32(view.data()).with_context(|| format!("tensor {name}"))?;
        out.push((name.to_string(), view.shape().to_vec(), data));
    }
    Ok(out)
}

/// Writes `tensors` (converted to f32) as a safetensors file, atomically: the data goes to
/// `<path>.tmp` in the same folder, is flushed to disk, then renamed over `path`, so an
/// interrupted write never leaves a broken file at `path`.
pub fn save_safetensors(tensors: &[(String, Tensor)], path: &Path) -> Result<()> {
    let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let v: Vec<f32> = t
            .to_dtype(DType::F32)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1())
            .with_context(|| format!("tensor {name}"))?;
        let bytes = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        owned.push((name.clone(), t.dims().to_vec(), bytes));
    }
    let mut views = Vec::with_capacity(owned.len());
    for (name, shape, bytes) in &owned {
        let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
            .map_err(|e| anyhow!("tensor {name}: {e}"))?;
        views.push((name.as_str(), view));
    }
    let data = safetensors::tensor::serialize(views, None).map_err(|e| anyhow!("serialising safetensors: {e}"))?;
    write_atomic(path, &data)
}

/// Writes `data` to `path` via `path.tmp` + fsync + rename (+ fsync of the folder).
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let mut tmp_name = path.file_name().context("path has no file name")?.to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let result = (|| -> Result<()> {
        let mut f = std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        f.write_all(data).with_context(|| format!("cannot write {}", tmp.display()))?;
        f.sync_all().with_context(|| format!("cannot sync {}", tmp.display()))?;
        drop(f);
        std::fs::rename(&tmp, path).with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return result;
    }
    // Make the rename durable; not possible on every platform, so best effort.
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// What [`Weights::check`] found wrong, all at once.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WeightsMismatch {
    /// Expected but absent: `(name, expected shape)`.
    pub missing: Vec<(String, Vec<usize>)>,
    /// Present but not expected: `(name, shape)`.
    pub unexpected: Vec<(String, Vec<usize>)>,
    /// Present with another shape: `(name, expected, found)`.
    pub mis_shaped: Vec<(String, Vec<usize>, Vec<usize>)>,
}

/// How many entries of each kind the message lists before "... and N more".
const LIST_LIMIT: usize = 20;

impl fmt::Display for WeightsMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if !self.missing.is_empty() {
            parts.push(format!("{} missing", self.missing.len()));
        }
        if !self.unexpected.is_empty() {
            parts.push(format!("{} unexpected", self.unexpected.len()));
        }
        if !self.mis_shaped.is_empty() {
            parts.push(format!("{} mis-shaped", self.mis_shaped.len()));
        }
        write!(f, "weights do not match the network: {}", parts.join(", "))?;
        let more = |f: &mut fmt::Formatter<'_>, n: usize| -> fmt::Result {
            if n > LIST_LIMIT {
                write!(f, "\n    ... and {} more", n - LIST_LIMIT)?;
            }
            Ok(())
        };
        if !self.missing.is_empty() {
            write!(f, "\n  missing (expected by the network, absent from the weights):")?;
            for (n, s) in self.missing.iter().take(LIST_LIMIT) {
                write!(f, "\n    {n} {s:?}")?;
            }
            more(f, self.missing.len())?;
        }
        if !self.unexpected.is_empty() {
            write!(f, "\n  unexpected (in the weights, not used by the network):")?;
            for (n, s) in self.unexpected.iter().take(LIST_LIMIT) {
                write!(f, "\n    {n} {s:?}")?;
            }
            more(f, self.unexpected.len())?;
        }
        if !self.mis_shaped.is_empty() {
            write!(f, "\n  mis-shaped:")?;
            for (n, e, s) in self.mis_shaped.iter().take(LIST_LIMIT) {
                write!(f, "\n    {n}: expected {e:?}, found {s:?}")?;
            }
            more(f, self.mis_shaped.len())?;
        }
        Ok(())
    }
}

impl std::error::Error for WeightsMismatch {}
