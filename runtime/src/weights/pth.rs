//! PyTorch checkpoint reader that never executes code: parses the pickle with the data-only
//! machine of [`super::pickle`] and resolves tensors itself.
//!
//! Handles both the zip format (torch >= 1.6, `archive/data.pkl` + `archive/data/<key>`) and
//! the legacy sequential format (magic, protocol, sys_info, object, storage keys, raw storages),
//! strided tensors, `_rebuild_parameter` wrappers, state dicts nested under common keys, and
//! pickled `nn.Module` trees (`torch.save(model)`, Ultralytics checkpoints), whose `_parameters`,
//! persistent `_buffers` and `_modules` are walked into `state_dict` names.

use super::{pickle, Elem, Parsed};
use anyhow::{anyhow, bail, Context, Result};
use candle_core::pickle::Object;
use std::collections::HashMap;
use std::io::{Cursor, Read};

/// Keys under which training scripts commonly nest the state dict, tried in this order.
pub(crate) const NESTED_KEYS: &[&str] = &[
    "state_dict",
    "model_state_dict",
    "model",
    "module",
    "net",
    "network",
    "params",
    "model_ema",
    "ema",
    "weights",
];

/// A tensor reference found in the pickle: storage key and strided view.
struct TensorRef {
    storage: String,
    elem: Elem,
    offset: usize,
    size: Vec<usize>,
    stride: Vec<usize>,
}

/// Parses the pickle at the cursor's position and moves the cursor past it.
fn parse_pickle(r: &mut Cursor<&[u8]>) -> Result<Object> {
    let start = r.position() as usize;
    let rest = r.get_ref().get(start..).unwrap_or(&[]);
    let (obj, len) = pickle::parse(rest).map_err(|e| anyhow!("bad pickle: {e:#}"))?;
    r.set_position((start + len) as u64);
    Ok(obj)
}

fn as_usize(o: &Object) -> Option<usize> {
    match o {
        Object::Int(i) if *i >= 0 => Some(*i as usize),
        Object::Long(i) if *i >= 0 => Some(*i as usize),
        _ => None,
    }
}

fn usize_tuple(o: &Object) -> Option<Vec<usize>> {
    match o {
        Object::Tuple(v) | Object::List(v) => v.iter().map(as_usize).collect(),
        _ => None,
    }
}

fn storage_elem(class_name: &str) -> Option<Elem> {
    Some(match class_name {
        "FloatStorage" => Elem::F32,
        "DoubleStorage" => Elem::F64,
        "HalfStorage" => Elem::F16,
        "BFloat16Storage" => Elem::BF16,
        "LongStorage" => Elem::I64,
        "IntStorage" => Elem::I32,
        "ShortStorage" => Elem::I16,
        "CharStorage" => Elem::I8,
        "ByteStorage" => Elem::U8,
        "BoolStorage" => Elem::Bool,
        _ => return None,
    })
}

/// Recognises `_rebuild_tensor_v2(storage, offset, size, stride, ...)`, possibly wrapped in
/// `_rebuild_parameter` or `_rebuild_from_type_v2`.
fn tensor_ref(o: &Object) -> Result<Option<TensorRef>> {
    let (callable, args) = match o {
        Object::Reduce { callable, args } => (callable.as_ref(), args.as_ref()),
        _ => return Ok(None),
    };
    let Object::Class { module_name, class_name } = callable else { return Ok(None) };
    let args = match args {
        Object::Tuple(a) => a,
        _ => return Ok(None),
    };
    match (module_name.as_str(), class_name.as_str()) {
        ("torch._utils", "_rebuild_parameter") | ("torch._utils", "_rebuild_parameter_with_state") => {
            return match args.first() {
                Some(inner) => tensor_ref(inner),
                None => Ok(None),
            }
        }
        ("torch._tensor", "_rebuild_from_type_v2") => {
            // (func, type, args, state): func is _rebuild_tensor_v2, args its arguments.
            if args.len() >= 3 {
                let rebuilt = Object::Reduce { callable: Box::new(args[0].clone()), args: Box::new(args[2].clone()) };
                return tensor_ref(&rebuilt);
            }
            return Ok(None);
        }
        ("torch._utils", "_rebuild_tensor_v2") | ("torch._utils", "_rebuild_tensor") => {}
        _ => return Ok(None),
    }
    if args.len() < 4 {
        bail!("malformed tensor record (expected storage, offset, size, stride)");
    }
    let Object::PersistentLoad(pid) = &args[0] else { bail!("tensor without a storage reference") };
    let Object::Tuple(pid) = pid.as_ref() else { bail!("malformed storage reference") };
    // ('storage', <StorageClass>, key, location, numel)
    if pid.len() < 5 {
        bail!("malformed storage reference");
    }
    let elem = match &pid[1] {
        Object::Class { class_name, .. } => {
            storage_elem(class_name).ok_or_else(|| anyhow!("unsupported storage type {class_name}"))?
        }
        _ => bail!("malformed storage type"),
    };
    let storage = match &pid[2] {
        Object::Unicode(s) => s.clone(),
        other => bail!("malformed storage key {other:?}"),
    };
    let offset = as_usize(&args[1]).context("malformed storage offset")?;
    let size = usize_tuple(&args[2]).context("malformed tensor size")?;
    let stride = usize_tuple(&args[3]).context("malformed tensor stride")?;
    if size.len() != stride.len() {
        bail!("tensor size and stride ranks differ");
    }
    Ok(Some(TensorRef { storage, elem, offset, size, stride }))
}

fn key_name(k: &Object) -> Option<&str> {
    match k {
        Object::Unicode(s) => Some(s.as_str()),
        _ => None,
    }
}

/// The state (`__dict__`) of a pickled `nn.Module`, if `o` is one.
fn module_state(o: &Object) -> Option<&[(Object, Object)]> {
    let Object::Build { args, .. } = o else { return None };
    let Object::Dict(state) = args.as_ref() else { return None };
    let has = |k| state.iter().any(|(key, _)| key_name(key) == Some(k));
    (has("_modules") && has("_parameters")).then_some(state.as_slice())
}

/// The value under string key `key`.
fn field<'a>(items: &'a [(Object, Object)], key: &str) -> Option<&'a Object> {
    items.iter().find(|(k, _)| key_name(k) == Some(key)).map(|(_, v)| v)
}

/// Names in a module's `_non_persistent_buffers_set` (buffers left out of its state dict).
fn non_persistent(state: &[(Object, Object)]) -> Vec<&str> {
    let Some(Object::Reduce { args, .. }) = field(state, "_non_persistent_buffers_set") else { return vec![] };
    match args.as_ref() {
        Object::Tuple(a) => match a.first() {
            Some(Object::List(items)) => items.iter().filter_map(key_name).collect(),
            _ => vec![],
        },
        _ => vec![],
    }
}

/// Appends a pickled module's tensors under their `state_dict` names, as
/// `nn.Module.state_dict()` orders them: own parameters, own persistent buffers, then each
/// child's (`None` entries skipped).
fn module_tensors(state: &[(Object, Object)], prefix: &str, out: &mut Vec<(String, TensorRef)>) -> Result<()> {
    let skip = non_persistent(state);
    for (key, kind) in [("_parameters", "parameter"), ("_buffers", "buffer")] {
        let Some(Object::Dict(items)) = field(state, key) else { continue };
        for (k, v) in items {
            let name = key_name(k).with_context(|| format!("module `{prefix}`: {kind} name {k:?}"))?;
            if matches!(v, Object::None) || (kind == "buffer" && skip.contains(&name)) {
                continue;
            }
            let t = tensor_ref(v)?.with_context(|| format!("{kind} {prefix}{name} is not a plain tensor"))?;
            out.push((format!("{prefix}{name}"), t));
        }
    }
    if let Some(Object::Dict(children)) = field(state, "_modules") {
        for (k, child) in children {
            let name = key_name(k).with_context(|| format!("module `{prefix}`: child name {k:?}"))?;
            if matches!(child, Object::None) {
                continue;
            }
            let cs = module_state(child).with_context(|| format!("{prefix}{name} is not a pickled nn.Module"))?;
            module_tensors(cs, &format!("{prefix}{name}."), out)?;
        }
    }
    Ok(())
}

/// Finds the state dict: a pickled module's tensors, a dict whose values include tensors, or
/// one of these nested under a common key (`ema` first when it holds a module, as Ultralytics
/// loads its checkpoints: `ckpt.get("ema") or ckpt["model"]`).
fn collect(obj: &Object, depth: usize) -> Result<Option<Vec<(String, TensorRef)>>> {
    if let Some(state) = module_state(obj) {
        let mut found = Vec::new();
        module_tensors(state, "", &mut found)?;
        return Ok((!found.is_empty()).then_some(found));
    }
    let obj = match obj {
        // A scripted module or an object with state: look at its state.
        Object::Build { args, .. } => args.as_ref(),
        o => o,
    };
    let Object::Dict(items) = obj else { return Ok(None) };
    let mut found = Vec::new();
    for (k, v) in items {
        if let (Some(name), Some(t)) = (key_name(k), tensor_ref(v)?) {
            found.push((name.to_string(), t));
        }
    }
    if !found.is_empty() {
        return Ok(Some(found));
    }
    if depth >= 3 {
        return Ok(None);
    }
    if let Some(ema) = field(items, "ema").filter(|e| module_state(e).is_some()) {
        return collect(ema, depth + 1);
    }
    for key in NESTED_KEYS {
        if let Some((_, v)) = items.iter().find(|(k, _)| key_name(k) == Some(key)) {
            if let Some(f) = collect(v, depth + 1)? {
                return Ok(Some(f));
            }
        }
    }
    Ok(None)
}

fn gather(t: &TensorRef, storage: &[u8]) -> Result<Vec<f32>> {
    let es = t.elem.size();
    let n_storage = storage.len() / es;
    let numel = t.size.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).context("tensor too large")?;
    if numel == 0 {
        return Ok(Vec::new());
    }
    let mut max = t.offset;
    for (&d, &s) in t.size.iter().zip(&t.stride) {
        max = (d - 1).checked_mul(s).and_then(|x| x.checked_add(max)).context("tensor too large")?;
    }
    if max >= n_storage {
        bail!("tensor view (last element {max}) exceeds its storage of {n_storage} elements (truncated file?)");
    }
    let all = t.elem.to_f32(storage)?;
    let contiguous = {
        let mut expect = 1;
        let mut ok = true;
        for (&d, &s) in t.size.iter().zip(&t.stride).rev() {
            if d != 1 && s != expect {
                ok = false;
            }
            expect *= d;
        }
        ok
    };
    if contiguous {
        return Ok(all[t.offset..t.offset + numel].to_vec());
    }
    let mut out = Vec::with_capacity(numel);
    let mut idx = vec![0usize; t.size.len()];
    for _ in 0..numel {
        let off = t.offset + idx.iter().zip(&t.stride).map(|(i, s)| i * s).sum::<usize>();
        out.push(all[off]);
        for d in (0..idx.len()).rev() {
            idx[d] += 1;
            if idx[d] < t.size[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    Ok(out)
}

fn build(refs: Vec<(String, TensorRef)>, storages: &HashMap<String, Vec<u8>>) -> Result<Parsed> {
    let mut out = Vec::with_capacity(refs.len());
    for (name, t) in refs {
        let st = storages
            .get(&t.storage)
            .ok_or_else(|| anyhow!("tensor {name}: storage {} missing from the file (truncated?)", t.storage))?;
        let data = gather(&t, st).with_context(|| format!("tensor {name}"))?;
        out.push((name, t.size, data));
    }
    Ok(out)
}

const NO_STATE_DICT: &str = "no state dict found (expected a dict of tensors, possibly under one of the keys \
     state_dict, model_state_dict, model, module, net, network, params, model_ema, ema, weights)";

/// Reads all tensors of a PyTorch checkpoint held in memory.
pub(crate) fn read(bytes: &[u8]) -> Result<Parsed> {
    if bytes.starts_with(b"PK\x03\x04") {
        read_zip(bytes)
    } else if bytes.starts_with(&[0x80, 0x02, 0x8a, 0x0a]) {
        read_legacy(bytes)
    } else {
        bail!("not a PyTorch checkpoint (neither a zip archive nor the legacy pickle format)")
    }
}

fn read_zip(bytes: &[u8]) -> Result<Parsed> {
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes)).context("not a valid zip archive (truncated?)")?;
    let pkl = zip
        .file_names()
        .find(|n| n.ends_with("data.pkl"))
        .map(str::to_string)
        .context("zip archive has no data.pkl: not a PyTorch checkpoint")?;
    let prefix = pkl.strip_suffix("data.pkl").unwrap_or("").to_string();
    let mut pkl_bytes = Vec::new();
    zip.by_name(&pkl)?.read_to_end(&mut pkl_bytes).context("reading data.pkl")?;
    let obj = parse_pickle(&mut Cursor::new(&pkl_bytes[..]))?;
    let refs = collect(&obj, 0)?.context(NO_STATE_DICT)?;
    let mut storages = HashMap::new();
    for (_, t) in &refs {
        if storages.contains_key(&t.storage) {
            continue;
        }
        let entry = format!("{prefix}data/{}", t.storage);
        let mut f = zip.by_name(&entry).with_context(|| format!("storage {entry} missing from the archive"))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf).with_context(|| format!("reading storage {entry}"))?;
        storages.insert(t.storage.clone(), buf);
    }
    build(refs, &storages)
}

fn read_legacy(bytes: &[u8]) -> Result<Parsed> {
    // The magic number pickle (PROTO 2, LONG1 of 10 bytes, STOP) is checked byte for byte.
    const MAGIC: [u8; 15] = [0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, b'.'];
    if bytes.len() < MAGIC.len() || bytes[..MAGIC.len()] != MAGIC {
        bail!("legacy PyTorch checkpoint with a wrong magic number");
    }
    let mut r = Cursor::new(bytes);
    r.set_position(MAGIC.len() as u64);
    let _proto = parse_pickle(&mut r).context("legacy checkpoint: protocol version")?;
    let sys_info = parse_pickle(&mut r).context("legacy checkpoint: sys_info")?;
    if let Object::Dict(items) = &sys_info {
        if let Some((_, Object::Bool(false))) = items.iter().find(|(k, _)| key_name(k) == Some("little_endian")) {
            bail!("big-endian legacy checkpoints are not supported");
        }
    }
    let obj = parse_pickle(&mut r).context("legacy checkpoint: object")?;
    let refs = collect(&obj, 0)?.context(NO_STATE_DICT)?;
    let keys = parse_pickle(&mut r).context("legacy checkpoint: storage key list (truncated?)")?;
    let keys: Vec<String> = match keys {
        Object::List(v) | Object::Tuple(v) => v
            .into_iter()
            .map(|k| match k {
                Object::Unicode(s) => Ok(s),
                other => Err(anyhow!("malformed storage key {other:?}")),
            })
            .collect::<Result<_>>()?,
        _ => bail!("legacy checkpoint: malformed storage key list"),
    };
    let elem_of: HashMap<&str, Elem> = refs.iter().map(|(_, t)| (t.storage.as_str(), t.elem)).collect();
    let mut storages = HashMap::new();
    for key in keys {
        let mut n = [0u8; 8];
        r.read_exact(&mut n).with_context(|| format!("storage {key}: file truncated"))?;
        let numel = u64::from_le_bytes(n) as usize;
        // Storages not referenced by any tensor still have to be skipped: assume 4-byte
        // elements only if unknown (they are never used).
        let es = elem_of.get(key.as_str()).map(|e| e.size()).unwrap_or(4);
        let len = numel.checked_mul(es).context("storage too large")?;
        let pos = r.position() as usize;
        if pos.checked_add(len).is_none_or(|end| end > bytes.len()) {
            bail!("storage {key}: file truncated ({} bytes left, {len} needed)", bytes.len() - pos);
        }
        storages.insert(key, bytes[pos..pos + len].to_vec());
        r.set_position((pos + len) as u64);
    }
    build(refs, &storages)
}
