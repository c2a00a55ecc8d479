//! Fast CPU kernels for inference (f32, contiguous NCHW, no autograd), at the instruction-set
//! level the caller passes ([`Isa`]):
//! * `conv` — dense convolution as a packed GEMM ([`packed`], AVX2/AVX-512 micro-kernels) or
//!   im2col + the `gemm` crate (portable level, grouped convs), direct depthwise convolution
//!   ([`super::depthwise`]); bias, residual and activation fused into the output pass;
//! * `elementwise` — per-channel affine (unfolded BatchNorm), channel gating (squeeze-excitation),
//!   element-wise add, layer norms;
//! * `pool` — max/average pooling, global pooling;
//! * `attention` — linear layers and multi-head self-attention;
//! * `gemm` — the one bounds-checked entry to the `gemm` crate.
//!
//! Every entry point returns `Ok(None)` when it does not apply (not on the CPU, not f32, a
//! tensor that tracks gradients), and the caller falls back to the portable candle path.

pub mod packed;
pub mod winograd;
pub mod winograd1d;

mod attention;
mod cols;
mod conv;
mod elementwise;
pub(crate) mod gemm;
mod linear;
mod matvec;
mod micro;
mod pool;
#[cfg(target_arch = "x86_64")]
mod stem;
#[cfg(target_arch = "x86_64")]
mod winograd_x86;

pub use super::cpu::Isa;
pub use attention::{attention_qkv, linear};
pub use linear::linear_tensor as linear_packed;
pub use conv::{conv2d, conv2d_packed, conv2d_residual, depthwise_pooled, ConvArgs, DenseWeights};
pub use elementwise::{add_act, channel_affine, channel_gate, layer_norm};
pub use pool::{global_pool, pool2d};

use candle_core::{CpuStorage, Storage, Tensor};
use tlc_compiler::ir::Activation;

/// Output positions (GEMM columns) per task tile of the packed conv (a multiple of every NR).
const NB: usize = 64;

/// Runs `f` on the contiguous f32 CPU data of `t`, or returns `None`.
fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Option<R> {
    if t.track_op() || !t.device().is_cpu() {
        return None;
    }
    let (storage, layout) = t.storage_and_layout();
    let (start, end) = layout.contiguous_offsets()?;
    match &*storage {
        Storage::Cpu(CpuStorage::F32(v)) => Some(f(&v[start..end])),
        _ => None,
    }
}

/// Applies `a` in place (auto-vectorised at `isa`).
pub fn apply_act(a: Option<Activation>, v: &mut [f32], isa: Isa) {
    if let Some(a) = a {
        super::cpu::act(isa, a, v)
    }
}

fn threads() -> usize {
    rayon::current_num_threads()
}

/// A vector of `n` floats every element of which the caller overwrites before reading.
fn uninit_vec(n: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(n);
    // SAFETY: f32 has no invalid bit patterns and no drop; callers write every element
    // before any read (each use states how).
    #[allow(clippy::uninit_vec)]
    unsafe {
        v.set_len(n)
    };
    v
}

/// An output buffer that parallel tasks write through disjoint regions (the packed conv's
/// rectangles, the linear layers' row-block x column-chunk blocks).
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: every user's tasks write disjoint regions only, and the buffer outlives them.
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The pointer `i` floats in (callers keep within the buffer).
    fn at(self, i: usize) -> *mut f32 {
        self.0.wrapping_add(i)
    }
}

/// Conv geometry.
#[derive(Clone, Copy, Debug)]
pub struct Geo {
    c: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    oh: usize,
    ow: usize,
    stride: [usize; 2],
    pad: [usize; 4],
    dil: [usize; 2],
}

impl Geo {
    /// The geometry of a conv of `[c, h, w]` inputs with kernel `[kh, kw]`, or `None` when the
    /// arguments are degenerate (zero stride or dilation, kernel larger than the padded input).
    pub fn new(c: usize, h: usize, w: usize, kernel: [usize; 2], stride: [usize; 2], pad: [usize; 4], dil: [usize; 2]) -> Option<Geo> {
        let [kh, kw] = kernel;
        if stride.contains(&0) || dil.contains(&0) || kh == 0 || kw == 0 {
            return None;
        }
        let (eh, ew) = (dil[0] * (kh - 1) + 1, dil[1] * (kw - 1) + 1);
        if h + pad[0] + pad[1] < eh || w + pad[2] + pad[3] < ew {
            return None;
        }
        let oh = (h + pad[0] + pad[1] - eh) / stride[0] + 1;
        let ow = (w + pad[2] + pad[3] - ew) / stride[1] + 1;
        Some(Geo { c, h, w, kh, kw, oh, ow, stride, pad, dil })
    }

    /// Output positions per image.
    pub fn positions(&self) -> usize {
        self.oh * self.ow
    }

    /// Output height and width.
    pub fn out_hw(&self) -> (usize, usize) {
        (self.oh, self.ow)
    }
}

#[cfg(test)]
mod tests;
