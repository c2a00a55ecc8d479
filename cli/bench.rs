//! `tlc bench`: forward latency of a spec on the CPU (fixture weights, zero input).

use crate::compile::with_graph;
use candle_core::{DType, Device, Tensor};
use clap::Args;
use std::time::Instant;
use tlc_compiler::ir::NodeId;
use tlc_runtime::kernels::cpu::Isa;
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
    /// Also print the time per op kind on stderr (each node's fastest run over the timed
    /// passes, summed by kind); `TLC_PROFILE=1` does the same.
    #[arg(long)]
    pub profile: bool,
    /// Slowest nodes listed by `--profile`.
    #[arg(long, default_value_t = 12)]
    pub top: usize,
    /// Kernel level: avx512, avx2 or portable (default: `TLC_ISA`, else the best this CPU has).
    #[arg(long)]
    pub isa: Option<String>,
}

/// Peak resident set size in MiB (`VmHWM` of /proc/self/status), when available.
fn peak_rss_mb() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// CPU time of the whole process (all threads, user + system) in ms, from /proc/self/stat
/// (10 ms ticks), when available.
fn process_cpu_ms() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let rest = s.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks * 10.0)
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

/// The kernel level from `--isa` or `TLC_ISA`, else the best this CPU has.
pub fn isa_setting(flag: Option<&str>) -> anyhow::Result<Isa> {
    let env = std::env::var("TLC_ISA").ok();
    match flag.or(env.as_deref()) {
        None => Ok(Isa::detect()),
        Some(s) => {
            let isa = Isa::parse(s).ok_or_else(|| anyhow::anyhow!("unknown kernel level `{s}` (expected avx512, avx2 or portable)"))?;
            if !isa.available() {
                anyhow::bail!("this CPU does not support {s}");
            }
            Ok(isa)
        }
    }
}

fn run(g: tlc_compiler::ir::Graph, a: &BenchArgs) -> anyhow::Result<()> {
    if a.batch == 0 || a.iters == 0 {
        anyhow::bail!("--batch and --iters must be positive");
    }
    let dev = Device::Cpu;
    let input = g.meta.input.clone();
    let model = Model::with_fixture_weights(g, &dev)?;
    let x = Tensor::zeros((a.batch, input[0], input[1], input[2]), DType::F32, &dev)?;
    let isa = isa_setting(a.isa.as_deref())?;
    let profile = a.profile || std::env::var_os("TLC_PROFILE").is_some();
    if profile && a.plain {
        anyhow::bail!("--profile times the optimized view; drop --plain");
    }
    // The plain model's unfolded tensors are dropped when only the optimized view runs.
    let (plain, opt) = if a.plain { (Some(model), None) } else { (None, Some(model.optimized_with(isa)?)) };
    let mut best: Vec<f64> = opt.as_ref().map_or(Vec::new(), |o| vec![f64::INFINITY; o.graph.graph.node_count()]);
    let mut forward = |timed: bool| -> anyhow::Result<Tensor> {
        match (&opt, &plain) {
            (Some(o), _) if profile && timed => {
                let (y, per) = o.forward_timed(&x)?;
                best.iter_mut().zip(per).for_each(|(b, t)| *b = b.min(t));
                Ok(y)
            }
            (Some(o), _) => o.forward(&x),
            (None, Some(m)) => m.forward(&x),
            (None, None) => anyhow::bail!("no model to run"),
        }
    };
    for _ in 0..2 {
        forward(false)?;
    }
    let mut ms: Vec<f64> = Vec::with_capacity(a.iters);
    let cpu0 = process_cpu_ms();
    for _ in 0..a.iters {
        let t = Instant::now();
        let y = forward(true)?;
        drop(y);
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    // Mean CPU time per forward: on a loaded machine it moves much less than wall time.
    let cpu = match (cpu0, process_cpu_ms()) {
        (Some(a0), Some(a1)) => (a1 - a0) / a.iters as f64,
        _ => f64::NAN,
    };
    if let Some(o) = opt.as_ref().filter(|_| profile) {
        if let Some(s) = o.split_at(a.batch) {
            eprintln!("image by image up to node {} (`{}`), then batched", s.end, o.graph.node(s.carry).name);
        }
        eprintln!("per op kind, each node's fastest of {} passes:", a.iters);
        eprint!("{}", o.profile_report(&best));
        let mut nodes: Vec<(f64, NodeId)> = o.graph.nodes().filter(|(id, _)| best[id.index()].is_finite()).map(|(id, _)| (best[id.index()], id)).collect();
        nodes.sort_by(|a, b| b.0.total_cmp(&a.0));
        eprintln!("slowest nodes:");
        for (t, id) in nodes.into_iter().take(a.top) {
            let node = o.graph.node(id);
            eprintln!("{t:9.3} ms  {} ({}, output {:?})", node.name, o.op_kind(id), node.shape.as_deref().unwrap_or(&[]));
        }
    }
    ms.sort_by(f64::total_cmp);
    let pick = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    let (median, p90) = (pick(0.5), pick(0.9));
    let ips = a.batch as f64 / (median / 1e3);
    let rss = peak_rss_mb().unwrap_or(f64::NAN);
    if a.json {
        println!("{}", serde_json::json!({"median_ms": median, "p90_ms": p90, "images_per_s": ips, "peak_rss_mb": rss, "cpu_ms": cpu, "min_ms": ms[0], "max_ms": ms[ms.len() - 1], "iters": a.iters, "batch": a.batch, "threads": rayon_threads(), "optimized": !a.plain}));
    } else {
        println!(
            "{}: batch {}, {} threads, {} iters{}: median {median:.2} ms, p90 {p90:.2} ms (min {:.2}, max {:.2}), {ips:.1} images/s, {cpu:.1} ms CPU per forward, peak RSS {rss:.0} MiB",
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
