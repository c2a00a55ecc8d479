//! `tlc bench`: forward latency of a spec on the CPU (fixture weights, zero input).

use crate::compile::with_graph;
use candle_core::{DType, Device, Tensor};
use clap::Args;
use std::time::Instant;
use tlc_runtime::Model;

/// Arguments of `tlc bench`.
#[derive(Args)]
pub struct BenchArgs {
    /// Spec file.
    pub spec: String,
    /// Variant to build.
    #[arg(long)]
    pub variant: Option<String>,
    /// Images per forward pass.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Worker threads (sets RAYON_NUM_THREADS and CANDLE_NUM_THREADS); default: all cores.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Timed forward passes (after 2 warm-up passes).
    #[arg(long, default_value_t = 10)]
    pub iters: usize,
    /// Run the plain (unoptimized) model instead of the optimized view.
    #[arg(long)]
    pub plain: bool,
    /// Print `{"median_ms":..., "p90_ms":..., "images_per_s":..., "peak_rss_mb":...}`.
    #[arg(long)]
    pub json: bool,
}

/// Peak resident set size in MiB (`VmHWM` of /proc/self/status), when available.
fn peak_rss_mb() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// `tlc bench`.
pub fn bench(a: BenchArgs) -> u8 {
    if let Some(t) = a.threads {
        // Before any thread pool exists: rayon's global pool and candle's read these once.
        std::env::set_var("RAYON_NUM_THREADS", t.to_string());
        std::env::set_var("CANDLE_NUM_THREADS", t.to_string());
    }
    with_graph(&a.spec, a.variant.as_deref(), |g| run(g, &a))
}

fn run(g: tlc_compiler::ir::Graph, a: &BenchArgs) -> anyhow::Result<()> {
    if a.batch == 0 || a.iters == 0 {
        anyhow::bail!("--batch and --iters must be positive");
    }
    let dev = Device::Cpu;
    let input = g.meta.input.clone();
    let model = Model::with_fixture_weights(g, &dev)?;
    let x = Tensor::zeros((a.batch, input[0], input[1], input[2]), DType::F32, &dev)?;
    let forward: Box<dyn Fn() -> anyhow::Result<Tensor>> = if a.plain {
        Box::new(move || model.forward(&x))
    } else {
        // The plain model's unfolded tensors are dropped: only the optimized view stays.
        let mut opt = model.optimized()?;
        opt.profile = crate::run::profile_from_env();
        drop(model);
        Box::new(move || opt.forward(&x))
    };
    for _ in 0..2 {
        forward()?;
    }
    let mut ms: Vec<f64> = Vec::with_capacity(a.iters);
    for _ in 0..a.iters {
        let t = Instant::now();
        let y = forward()?;
        drop(y);
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    ms.sort_by(f64::total_cmp);
    let pick = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    let (median, p90) = (pick(0.5), pick(0.9));
    let ips = a.batch as f64 / (median / 1e3);
    let rss = peak_rss_mb().unwrap_or(f64::NAN);
    if a.json {
        println!("{}", serde_json::json!({"median_ms": median, "p90_ms": p90, "images_per_s": ips, "peak_rss_mb": rss, "min_ms": ms[0], "max_ms": ms[ms.len() - 1], "iters": a.iters, "batch": a.batch, "threads": rayon_threads(), "optimized": !a.plain}));
    } else {
        println!(
            "{}: batch {}, {} threads, {} iters{}: median {median:.2} ms, p90 {p90:.2} ms (min {:.2}, max {:.2}), {ips:.1} images/s, peak RSS {rss:.0} MiB",
            a.spec,
            a.batch,
            rayon_threads(),
            a.iters,
            if a.plain { " (plain)" } else { "" },
            ms[0],
            ms[ms.len() - 1]
        );
    }
    Ok(())
}

fn rayon_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}
