//! `onnx-proto-gen ONNX_PROTO OUT_RS`: compiles ONNX's onnx.proto with protox (pure Rust) and
//! writes the prost-build code to OUT_RS, after the header that explains where it came from.

use std::path::Path;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, proto, out] = &args[..] else {
        eprintln!("usage: onnx-proto-gen path/to/onnx.proto compiler/src/export/onnx/proto.rs");
        std::process::exit(2);
    };
    let proto = Path::new(proto);
    let dir = proto.parent().unwrap_or(Path::new("."));
    let name = proto.file_name().expect("a file name").to_string_lossy().to_string();
    let fds = protox::compile([name], [dir]).expect("onnx.proto compiles");
    let tmp = std::env::temp_dir().join("onnx-proto-gen");
    std::fs::create_dir_all(&tmp).expect("temporary folder");
    let mut cfg = prost_build::Config::new();
    cfg.out_dir(&tmp);
    cfg.compile_fds(fds).expect("prost-build generates the code");
    let code = std::fs::read_to_string(tmp.join("onnx.rs")).expect("generated onnx.rs");
    let old = std::fs::read_to_string(out).unwrap_or_default();
    let header: String = old.lines().take_while(|l| l.starts_with("//!") || l.starts_with("#![")).map(|l| format!("{l}\n")).collect();
    std::fs::write(out, format!("{header}\n{code}")).expect("write the output");
}
