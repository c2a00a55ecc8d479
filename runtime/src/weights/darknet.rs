//! Darknet `.weights` reader.
//!
//! A darknet weights file has no names and no shapes: a header (int32 major, minor, revision,
//! then `seen` as 8 bytes when `major * 10 + minor >= 2 && major < 1000 && minor < 1000`, else
//! 4 bytes, as darknet's `parser.c` reads it) followed by the float32 little-endian parameters
//! of every `[convolutional]` layer in layer order: with `batch_normalize`, BN beta, gamma,
//! rolling mean, rolling variance (each `[out]`), else the conv bias `[out]`; then the conv
//! weights `[out, in / groups, k, k]`.
//!
//! The layout therefore comes from the network's expected parameter list, whose names follow
//! the specs' convention for darknet networks: darknet layer `i` is `layers.<i>`, with
//! `layers.<i>.conv.weight`, `layers.<i>.conv.bias` (no BN) and
//! `layers.<i>.bn.{weight,bias,running_mean,running_var}`.

use super::{Elem, Parsed, IGNORED_SUFFIX};
use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, HashMap};

/// The BN tensors in file order (beta, gamma, rolling mean, rolling variance).
const BN_ORDER: [&str; 4] = ["bn.bias", "bn.weight", "bn.running_mean", "bn.running_var"];

/// One `[convolutional]` layer: its index and the tensors it stores, in file order.
struct Layer {
    index: usize,
    tensors: Vec<(String, Vec<usize>)>,
}

/// Reads the tensors of a darknet weights file laid out as `expected` describes.
pub(crate) fn read(bytes: &[u8], expected: &[(String, Vec<usize>)]) -> Result<Parsed> {
    let layers = plan(expected)?;
    let header = header_len(bytes)?;
    let mut pos = header;
    let mut out = Vec::new();
    for layer in &layers {
        for (name, shape) in &layer.tensors {
            let numel = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).context("tensor too large")?;
            let need = numel.checked_mul(4).context("tensor too large")?;
            let left = bytes.len() - pos;
            if need > left {
                bail!(
                    "file too short: layer {} ({name} {shape:?}) needs {need} bytes, {left} left \
                     (truncated file, or weights of another network?)",
                    layer.index
                );
            }
            out.push((name.clone(), shape.clone(), Elem::F32.to_f32(&bytes[pos..pos + need])?));
            pos += need;
        }
    }
    if pos != bytes.len() {
        let last = layers.last().map_or(0, |l| l.index);
        bail!(
            "{} trailing bytes after layer {last}, the last convolutional layer: the network expects {} bytes \
             of parameters (weights of another network?)",
            bytes.len() - pos,
            pos - header
        );
    }
    Ok(out)
}

/// Length of the header (version and `seen`), checking it is there and plausible.
pub(crate) fn header_len(bytes: &[u8]) -> Result<usize> {
    let int = |i: usize| bytes.get(4 * i..4 * i + 4).map(|b| i32::from_le_bytes(b.try_into().unwrap()));
    let (Some(major), Some(minor), Some(revision)) = (int(0), int(1), int(2)) else {
        bail!("bad header: the file has {} bytes, fewer than the 12 of darknet's version numbers", bytes.len());
    };
    if major < 0 || minor < 0 || revision < 0 {
        bail!("bad header: version {major}.{minor}.{revision} is not a darknet version (not a darknet .weights file?)");
    }
    let seen = if major as i64 * 10 + minor as i64 >= 2 && major < 1000 && minor < 1000 { 8 } else { 4 };
    let len = 12 + seen;
    if bytes.len() < len {
        bail!(
            "bad header: version {major}.{minor}.{revision} needs a {len}-byte header, the file has {} bytes",
            bytes.len()
        );
    }
    Ok(len)
}

/// Splits `layers.<i>.<rest>` into `(i, rest)`.
fn split_name(name: &str) -> Option<(usize, &str)> {
    let (index, rest) = name.strip_prefix("layers.")?.split_once('.')?;
    if !index.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let known = rest == "conv.weight" || rest == "conv.bias" || BN_ORDER.contains(&rest);
    Some((index.parse().ok()?, rest)).filter(|_| known)
}

/// The convolutional layers of the expected parameter list, by layer index, with their
/// tensors in file order.
fn plan(expected: &[(String, Vec<usize>)]) -> Result<Vec<Layer>> {
    let mut by_layer: BTreeMap<usize, HashMap<&str, &Vec<usize>>> = BTreeMap::new();
    for (name, shape) in expected {
        if name.ends_with(IGNORED_SUFFIX) {
            continue;
        }
        let Some((index, rest)) = split_name(name) else {
            bail!(
                "parameter `{name}` is not of the form layers.<i>.conv.{{weight,bias}} or \
                 layers.<i>.bn.{{weight,bias,running_mean,running_var}}: a darknet .weights file holds only \
                 convolutional layers named after their darknet layer index"
            );
        };
        by_layer.entry(index).or_default().insert(rest, shape);
    }
    if by_layer.is_empty() {
        bail!("the network has no convolutional layer to read from a darknet .weights file");
    }
    by_layer.into_iter().map(|(index, t)| layer(index, &t)).collect()
}

/// Checks one layer's tensors against darknet's layout and lists them in file order.
fn layer(index: usize, t: &HashMap<&str, &Vec<usize>>) -> Result<Layer> {
    let name = |rest: &str| format!("layers.{index}.{rest}");
    let Some(weight) = t.get("conv.weight").filter(|s| s.len() == 4) else {
        bail!("layer {index}: a darknet convolutional layer needs a 4-d {}", name("conv.weight"));
    };
    let out = vec![weight[0]];
    let bn = BN_ORDER.iter().filter(|r| t.contains_key(*r)).count();
    let firsts: Vec<&str> = match (bn, t.contains_key("conv.bias")) {
        (4, false) => BN_ORDER.to_vec(),
        (0, true) => vec!["conv.bias"],
        (0, false) => {
            bail!("layer {index}: darknet stores a bias for every convolution, {} is missing", name("conv.bias"))
        }
        _ => bail!(
            "layer {index}: needs either all of {} (batch_normalize) or {} alone",
            name("bn.*"),
            name("conv.bias")
        ),
    };
    let mut tensors = Vec::with_capacity(firsts.len() + 1);
    for rest in firsts {
        if *t[rest] != out {
            bail!(
                "layer {index}: {} has shape {:?}, expected {out:?} (the conv's output channels)",
                name(rest),
                t[rest]
            );
        }
        tensors.push((name(rest), out.clone()));
    }
    tensors.push((name("conv.weight"), weight.to_vec()));
    Ok(Layer { index, tensors })
}

#[cfg(test)]
mod tests {
    use super::*;

    type Names<'a> = &'a [(&'a str, &'a [usize])];

    fn exp(list: Names) -> Vec<(String, Vec<usize>)> {
        list.iter().map(|(n, s)| (n.to_string(), s.to_vec())).collect()
    }

    fn file(version: [i32; 3], seen: usize, floats: &[f32]) -> Vec<u8> {
        let mut b: Vec<u8> = version.iter().flat_map(|v| v.to_le_bytes()).collect();
        b.extend(std::iter::repeat_n(0u8, seen));
        b.extend(floats.iter().flat_map(|f| f.to_le_bytes()));
        b
    }

    #[test]
    fn weights_darknet_layout_and_header_rule() {
        // Layer 10 (no BN) comes after layer 2 (BN) although listed first.
        let e = exp(&[
            ("layers.10.conv.weight", &[1, 2, 1, 1]),
            ("layers.10.conv.bias", &[1]),
            ("layers.2.conv.weight", &[2, 1, 1, 1]),
            ("layers.2.bn.weight", &[2]),
            ("layers.2.bn.bias", &[2]),
            ("layers.2.bn.running_mean", &[2]),
            ("layers.2.bn.running_var", &[2]),
            ("layers.2.bn.num_batches_tracked", &[]),
        ]);
        let floats: Vec<f32> = (0..13).map(|i| i as f32).collect();
        for (version, seen) in [([0, 2, 5], 8), ([0, 1, 0], 4), ([1000, 0, 0], 4), ([0, 1000, 0], 4), ([1, 0, 0], 8)] {
            let got = read(&file(version, seen, &floats), &e).unwrap();
            let m: HashMap<_, _> = got.iter().map(|(n, s, d)| (n.as_str(), (s.clone(), d.clone()))).collect();
            assert_eq!(m.len(), 7);
            assert_eq!(m["layers.2.bn.bias"].1, [0.0, 1.0]);
            assert_eq!(m["layers.2.bn.weight"].1, [2.0, 3.0]);
            assert_eq!(m["layers.2.bn.running_mean"].1, [4.0, 5.0]);
            assert_eq!(m["layers.2.bn.running_var"].1, [6.0, 7.0]);
            assert_eq!(m["layers.2.conv.weight"], (vec![2, 1, 1, 1], vec![8.0, 9.0]));
            assert_eq!(m["layers.10.conv.bias"].1, [10.0]);
            assert_eq!(m["layers.10.conv.weight"], (vec![1, 2, 1, 1], vec![11.0, 12.0]));
        }
    }

    #[test]
    fn weights_darknet_rejects_foreign_parameter_lists() {
        let cases: [(Names, &str); 5] = [
            (&[], "no convolutional layer"),
            (&[("backbone.conv.weight", &[1, 1, 1, 1])], "backbone.conv.weight"),
            (&[("layers.3.conv.weight", &[1, 1, 1, 1])], "layers.3.conv.bias is missing"),
            (&[("layers.3.conv.weight", &[1, 1, 1, 1]), ("layers.3.bn.weight", &[1])], "either all of"),
            (&[("layers.3.conv.weight", &[2, 1, 1, 1]), ("layers.3.conv.bias", &[3])], "expected [2]"),
        ];
        for (e, msg) in cases {
            let err = format!("{:#}", read(&file([0, 2, 0], 8, &[0.0; 16]), &exp(e)).unwrap_err());
            assert!(err.contains(msg), "{err}");
        }
    }
}
