//! `tlc`: the command line. It only parses arguments and calls the compiler and runtime;
//! one module per subcommand.

/// mimalloc: its blocks live on transparent huge pages (a model's weights and activations
/// need far fewer TLB entries), and its per-thread free lists serve the many small blocks of a
/// pass. Each node's fastest pass, summed, against glibc's allocator: MobileNetV2 b1 -5 %,
/// EfficientNet-B0 -5 %, DenseNet-121 -4 %, ResNet-50 -3 %, ViT-B/16 -1 %.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod bench;
mod compile;
mod draw;
mod eval;
mod export;
mod features;
mod import;
mod inspect;
mod run;
mod train;
mod weights;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// tlc: a declarative architecture-spec compiler for vision networks.
#[derive(Parser)]
#[command(name = "tlc", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Colour diagnostics: `auto` (on a terminal, unless NO_COLOR is set), `always`, `never`.
    #[arg(long, global = true, default_value = "auto", value_parser = ["auto", "always", "never"])]
    color: String,
}

#[derive(Subcommand)]
enum Command {
    /// Check a spec: exit 0 with a one-line summary, or 1 with diagnostics.
    Check(inspect::CheckArgs),
    /// Print a Keras-like summary table of a spec.
    Summary(inspect::SummaryArgs),
    /// Print the graph as Graphviz DOT.
    Dot(inspect::DotArgs),
    /// Print the parameter list (names and shapes).
    Params(inspect::ParamsArgs),
    /// Draw the graph as SVG or PNG (no Graphviz needed).
    Draw(draw::DrawArgs),
    /// Write an interactive HTML viewer of the graph (one self-contained file).
    View(draw::ViewArgs),
    /// Run a model on images or a .npy input.
    Run(run::RunArgs),
    /// Transfer learning: cut a pretrained spec at its head, attach a new head, train it.
    Train(train::TrainArgs),
    /// Accuracy, precision/recall/F1, ROC AUC and confusion matrix on a folder of classes.
    Eval(eval::EvalArgs),
    /// Save intermediate features of a folder of images (with the file names).
    Features(features::FeaturesArgs),
    /// Forward-pass latency, throughput and peak memory on the CPU.
    Bench(bench::BenchArgs),
    /// Pretrained checkpoints: list, fetch, path, verify.
    Weights(weights::WeightsArgs),
    /// Translate another framework's network description into a spec.
    Import(import::ImportArgs),
    /// Export to ONNX, to a PyTorch source file, or to a Triton model repository.
    Export(export::ExportArgs),
}

/// `tlc ... | head` ends quietly, as other command-line tools do: the default action for
/// SIGPIPE (Rust starts programs with it ignored, so every print to a closed pipe would panic).
fn quiet_on_closed_pipe() {
    #[cfg(unix)]
    {
        extern "C" {
            fn signal(signum: i32, handler: usize) -> usize;
        }
        const SIGPIPE: i32 = 13;
        const SIG_DFL: usize = 0;
        // SAFETY: sets the disposition of one signal to the default, before any other thread
        // exists; `signal` takes plain integers and keeps no pointer.
        unsafe { signal(SIGPIPE, SIG_DFL) };
    }
}

fn main() -> ExitCode {
    quiet_on_closed_pipe();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    if matches!(cli.command, Command::Run(_) | Command::Train(_) | Command::Eval(_) | Command::Features(_) | Command::Bench(_)) {
        // Forward passes in a loop: reuse freed activations instead of remapping them.
        keep_freed_memory();
    }
    compile::set_color(&cli.color);
    let code = match cli.command {
        Command::Check(a) => inspect::check(a),
        Command::Summary(a) => inspect::summary(a),
        Command::Dot(a) => inspect::dot(a),
        Command::Params(a) => inspect::params(a),
        Command::Draw(a) => draw::draw_cmd(a),
        Command::View(a) => draw::view(a),
        Command::Run(a) => run::run(a),
        Command::Train(a) => train::train_cmd(a),
        Command::Eval(a) => eval::eval(a),
        Command::Features(a) => features::features(a),
        Command::Bench(a) => bench::bench(a),
        Command::Weights(a) => weights::weights(a),
        Command::Import(a) => import::import_cmd(a),
        Command::Export(a) => export::export(a),
    };
    ExitCode::from(code)
}

/// Keeps the memory a forward pass frees for the next instead of giving it back to the system
/// (mimalloc's purge delay -1: its default, 10 ms, decommitted the huge pages of each pass's
/// activations and faulted them in again, ~7 times a pass for MobileNetV2).
fn keep_freed_memory() {
    extern "C" {
        fn mi_option_set(option: i32, value: std::ffi::c_long);
    }
    // `mi_option_purge_delay` in mimalloc.h (v3).
    const MI_OPTION_PURGE_DELAY: i32 = 15;
    // SAFETY: sets one of mimalloc's integer options (an atomic store); any value is valid.
    unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}
