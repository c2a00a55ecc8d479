//! Recognising a checkpoint file's format from its first bytes, to reject a download that is
//! not a checkpoint (an HTML error page, a truncated file) before it enters the cache.

use anyhow::{bail, Context, Result};
use std::io::Read;
use std::path::Path;

/// Checks that `path` starts like a checkpoint tlc reads: safetensors (with a header that fits
/// the file), a PyTorch zip or legacy pickle, or (when `file_name` ends in `.weights`) a darknet
/// header whose remaining bytes are whole floats. `file_name` is the checkpoint's name (the
/// file itself may be a `.part` download).
pub fn check_format(path: &Path, file_name: &str) -> Result<()> {
    let len = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?.len();
    let mut head = [0u8; 20];
    let n = std::fs::File::open(path)?.read(&mut head)?;
    let head = &head[..n];
    if head.starts_with(b"PK\x03\x04") || head.starts_with(&[0x80, 0x02, 0x8a, 0x0a]) {
        return Ok(());
    }
    if head.len() >= 9 && head[8] == b'{' {
        let header = u64::from_le_bytes(head[..8].try_into().unwrap());
        if header.saturating_add(8) <= len {
            return Ok(());
        }
        bail!("a safetensors header of {header} bytes does not fit in {len} bytes");
    }
    if file_name.ends_with(".weights") {
        return check_darknet(head, len);
    }
    let text = String::from_utf8_lossy(head).to_ascii_lowercase();
    if text.trim_start().starts_with('<') {
        bail!("it starts like an HTML page (a proxy, login or error page?)");
    }
    bail!("neither safetensors, a PyTorch checkpoint nor a darknet .weights file ({len} bytes)")
}

fn check_darknet(head: &[u8], len: u64) -> Result<()> {
    let header = super::darknet::header_len(head)? as u64;
    // Darknet versions are small numbers; text (an error page) read as integers is not.
    let version_ok = head.chunks_exact(4).take(3).all(|b| i32::from_le_bytes(b.try_into().unwrap()) < 100_000);
    if !version_ok {
        bail!("not a darknet header");
    }
    if len < header || !(len - header).is_multiple_of(4) {
        bail!("a darknet file of {len} bytes does not hold whole float32 values after its {header}-byte header");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_format;

    fn with_file(name: &str, bytes: &[u8], f: impl FnOnce(&std::path::Path)) {
        let dir = std::env::temp_dir().join(format!("tlc-format-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        f(&p);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn recognises_formats_and_rejects_html() {
        with_file("a.pth", b"PK\x03\x04rest", |p| check_format(p, p.file_name().unwrap().to_str().unwrap()).unwrap());
        let mut st = 2u64.to_le_bytes().to_vec();
        st.extend_from_slice(b"{}");
        with_file("a.safetensors", &st, |p| check_format(p, p.file_name().unwrap().to_str().unwrap()).unwrap());
        let mut dn: Vec<u8> = [0i32, 2, 5].iter().flat_map(|x| x.to_le_bytes()).collect();
        dn.extend_from_slice(&[0u8; 8 + 12]);
        with_file("a.weights", &dn, |p| check_format(p, p.file_name().unwrap().to_str().unwrap()).unwrap());
        with_file("b.weights", &dn[..22], |p| assert!(check_format(p, p.file_name().unwrap().to_str().unwrap()).unwrap_err().to_string().contains("whole float32")));
        with_file("c.pth", b"<!DOCTYPE html><html>", |p| assert!(check_format(p, p.file_name().unwrap().to_str().unwrap()).unwrap_err().to_string().contains("HTML")));
        let mut big = 1000u64.to_le_bytes().to_vec();
        big.extend_from_slice(b"{}");
        with_file("d.safetensors", &big, |p| assert!(check_format(p, p.file_name().unwrap().to_str().unwrap()).unwrap_err().to_string().contains("does not fit")));
    }
}
