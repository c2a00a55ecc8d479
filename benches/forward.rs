//! Forward-pass latency of zoo models on CPU at batch 1 (criterion). Run with
//! `cargo bench --bench forward`; `benches/compare_pytorch.py` runs the PyTorch side.

use candle_core::{Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion};
use tlc_compiler::span::SourceLoader;
use tlc_runtime::Model;

struct Disk;
impl SourceLoader for Disk {
    fn load(&self, path: &str) -> Result<String, String> {
        std::fs::read_to_string(path).map_err(|e| e.to_string())
    }
}

fn bench(c: &mut Criterion) {
    let root = env!("CARGO_MANIFEST_DIR");
    for name in ["resnet50", "mobilenet_v2", "densenet121", "efficientnet_b0", "convnext_tiny", "vit_b_16"] {
        let path = format!("{root}/specs/{name}.yaml");
        let Some(graph) = tlc_compiler::compile(&path, &Disk, &Default::default()).graph else { continue };
        let input = graph.meta.input.clone();
        let model = Model::with_fixture_weights(graph, &Device::Cpu).unwrap();
        let x = Tensor::zeros((1, input[0], input[1], input[2]), candle_core::DType::F32, &Device::Cpu).unwrap();
        c.bench_function(&format!("{name}/batch1"), |b| b.iter(|| model.forward(&x).unwrap()));
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = bench
}
criterion_main!(benches);
