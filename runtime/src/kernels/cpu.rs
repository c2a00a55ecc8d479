//! CPU feature dispatch for the fast kernels, and the element-wise math they share
//! (activations, a vectorisable `exp` and `erf`).
//!
//! [`Isa`] is chosen at run time: [`Isa::detect`] gives the best this CPU has, and a caller
//! may ask for less (the parity tests run every level this CPU has). Kernels written with
//! intrinsics have one function per level; plain loops are compiled for the level by
//! [`dispatch`].

use tlc_compiler::ir::Activation;

/// The instruction-set level the fast kernels use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// No explicit SIMD (the `gemm` crate for GEMMs, scalar loops elsewhere); any CPU.
    Portable,
    /// AVX2 and FMA (x86-64).
    Avx2,
    /// AVX-512 F/VL/DQ/BW on top of AVX2 and FMA (x86-64).
    Avx512,
}

impl Isa {
    /// The best level this CPU supports.
    pub fn detect() -> Isa {
        static BEST: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *BEST.get_or_init(|| [Isa::Avx512, Isa::Avx2].into_iter().find(|i| i.available()).unwrap_or(Isa::Portable))
    }

    /// Whether this CPU supports the level (detected once: kernels ask on every call).
    pub fn available(self) -> bool {
        static LEVELS: std::sync::OnceLock<[bool; 3]> = std::sync::OnceLock::new();
        LEVELS.get_or_init(|| [Isa::Portable, Isa::Avx2, Isa::Avx512].map(Isa::supported))[self as usize]
    }

    fn supported(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = || std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma");
            match self {
                Isa::Portable => true,
                Isa::Avx2 => avx2(),
                Isa::Avx512 => {
                    avx2()
                        && std::is_x86_feature_detected!("avx512f")
                        && std::is_x86_feature_detected!("avx512vl")
                        && std::is_x86_feature_detected!("avx512dq")
                        && std::is_x86_feature_detected!("avx512bw")
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == Isa::Portable
        }
    }

    /// Every level this CPU supports, lowest first.
    pub fn all_available() -> Vec<Isa> {
        [Isa::Portable, Isa::Avx2, Isa::Avx512].into_iter().filter(|i| i.available()).collect()
    }

    /// `portable`, `avx2` or `avx512`.
    pub fn parse(s: &str) -> Option<Isa> {
        match s.to_ascii_lowercase().as_str() {
            "portable" => Some(Isa::Portable),
            "avx2" => Some(Isa::Avx2),
            "avx512" => Some(Isa::Avx512),
            _ => None,
        }
    }

    /// `self`, lowered to what this CPU supports.
    pub fn capped(self) -> Isa {
        self.min(Isa::detect())
    }
}

/// Defines `fn name(isa: Isa, args..) -> R` whose body is compiled three times: for AVX-512 and
/// for AVX2+FMA (taken when `isa` allows it and the CPU has them, so plain loops
/// auto-vectorise with 512- or 256-bit vectors) and as plain code. The body sees a const
/// `FMA: bool` (true in the first two) to pass on to [`mad`] users such as [`act_slice`], and
/// `W512: bool` (true in the first) for code with AVX-512 intrinsics. The body is an `#[inline(always)]` function, so it is compiled
/// inside the `target_feature` function whatever its size (a closure passed to a generic
/// wrapper is not reliably inlined, and then runs without the features).
macro_rules! dispatch {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($a:ident: $t:ty),* $(,)?) $(-> $r:ty)? $body:block) => {
        $(#[$m])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name(isa: $crate::kernels::cpu::Isa, $($a: $t),*) $(-> $r)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn body<const FMA: bool, const W512: bool>($($a: $t),*) $(-> $r)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx512($($a: $t),*) $(-> $r)? {
                    body::<true, true>($($a),*)
                }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx2($($a: $t),*) $(-> $r)? {
                    body::<true, false>($($a),*)
                }
                if isa >= $crate::kernels::cpu::Isa::Avx512 && $crate::kernels::cpu::Isa::Avx512.available() {
                    // SAFETY: the CPU has these AVX-512 subsets, AVX2 and FMA (checked just above).
                    return unsafe { avx512($($a),*) };
                }
                if isa >= $crate::kernels::cpu::Isa::Avx2 && $crate::kernels::cpu::Isa::Avx2.available() {
                    // SAFETY: the CPU has AVX2 and FMA (checked just above).
                    return unsafe { avx2($($a),*) };
                }
            }
            let _ = isa;
            body::<false, false>($($a),*)
        }
    };
}
pub(crate) use dispatch;

dispatch! {
    /// `v = act(v)`.
    pub(crate) fn act(a: Activation, v: &mut [f32]) {
        act_slice::<FMA, W512>(a, v)
    }
}

dispatch! {
    /// `v = act(v * s + t) * m` in place (a per-channel affine map, an optional activation
    /// and a gate; pass `t = 0`, `s = 1` or `m = 1` for what does not apply).
    pub(crate) fn affine_act(v: &mut [f32], s: f32, t: f32, a: Option<Activation>, m: f32) {
        if s != 1.0 || t != 0.0 {
            v.iter_mut().for_each(|x| *x = *x * s + t);
        }
        if let Some(a) = a {
            act_slice::<FMA, W512>(a, v);
        }
        if m != 1.0 {
            v.iter_mut().for_each(|x| *x *= m);
        }
    }
}

dispatch! {
    /// `o = act(x * s + t)`.
    pub(crate) fn affine_act_into(o: &mut [f32], x: &[f32], s: f32, t: f32, a: Option<Activation>) {
        o.iter_mut().zip(x).for_each(|(d, v)| *d = v * s + t);
        if let Some(a) = a {
            act_slice::<FMA, W512>(a, o);
        }
    }
}

dispatch! {
    /// `o = act(o + r)` (`r` may be empty: activation only).
    pub(crate) fn add_act_inplace(o: &mut [f32], r: &[f32], a: Option<Activation>) {
        o.iter_mut().zip(r).for_each(|(d, v)| *d += v);
        if let Some(a) = a {
            act_slice::<FMA, W512>(a, o);
        }
    }
}

dispatch! {
    /// `o = act(x + y)`.
    pub(crate) fn add_act_into(o: &mut [f32], x: &[f32], y: &[f32], a: Option<Activation>) {
        o.iter_mut().zip(x.iter().zip(y)).for_each(|(d, (u, v))| *d = u + v);
        if let Some(a) = a {
            act_slice::<FMA, W512>(a, o);
        }
    }
}

dispatch! {
    /// `act(v)` in place, returning the sum of the result when `want_sum` (else 0).
    pub(crate) fn act_sum(a: Option<Activation>, v: &mut [f32], want_sum: bool) -> f32 {
        #[cfg(target_arch = "x86_64")]
        if W512 && matches!(a, Some(Activation::Silu | Activation::Sigmoid)) {
            // SAFETY: `W512` is true only in the AVX-512 instance, run on a CPU that has it.
            return unsafe { super::logistic_x86::apply(v, a == Some(Activation::Silu), want_sum) };
        }
        if let Some(a) = a {
            act_slice::<FMA, W512>(a, v);
        }
        if want_sum {
            sum_slice(v)
        } else {
            0.0
        }
    }
}

dispatch! {
    /// The dot product of `a` and `b` (16 interleaved partial sums, as [`sum`]).
    pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
        let mut acc = [0f32; 16];
        let (mut ca, mut cb) = (a.chunks_exact(16), b.chunks_exact(16));
        for (x, y) in (&mut ca).zip(&mut cb) {
            for ((s, &u), &v) in acc.iter_mut().zip(x).zip(y) {
                *s = mad::<FMA>(u, v, *s);
            }
        }
        let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(u, v)| u * v).sum();
        acc.iter().sum::<f32>() + tail
    }
}

dispatch! {
    /// The sum of `v`.
    pub(crate) fn sum(v: &[f32]) -> f32 {
        sum_slice(v)
    }
}

/// Sum in 16 interleaved partial sums (so it vectorises; the order differs from a serial sum
/// only in rounding).
#[inline(always)]
pub(crate) fn sum_slice(v: &[f32]) -> f32 {
    sum_map(v, |x| x)
}

/// The sum of `f(x)` over `v`, in 16 interleaved partial sums as [`sum_slice`].
#[inline(always)]
pub(crate) fn sum_map(v: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; 16];
    let mut chunks = v.chunks_exact(16);
    for c in &mut chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += f(x);
        }
    }
    acc.iter().sum::<f32>() + chunks.remainder().iter().map(|&x| f(x)).sum::<f32>()
}

/// The largest value of `v` (`-inf` when empty), in 16 interleaved lanes as [`sum_slice`]
/// (a serial fold of `f32::max` does not vectorise).
#[inline(always)]
pub(crate) fn max_slice(v: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 16];
    let mut chunks = v.chunks_exact(16);
    for c in &mut chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a = if x > *a { x } else { *a };
        }
    }
    chunks.remainder().iter().chain(&acc).fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m })
}

/// The bounds ReLU and ReLU6 clamp to, for kernels that apply them as they store (`None` for
/// other activations).
pub(crate) fn clamp_bounds(a: Option<Activation>) -> Option<(f32, f32)> {
    match a {
        Some(Activation::Relu) => Some((0.0, f32::INFINITY)),
        Some(Activation::Relu6) => Some((0.0, 6.0)),
        _ => None,
    }
}

/// Applies `a` to every element of `v` (plain loops: callers run it inside a [`dispatch`]ed
/// function and pass its `FMA` and `W512`; SiLU and sigmoid take AVX-512's own instructions
/// where `W512`, [`super::logistic_x86`]).
#[inline(always)]
pub(crate) fn act_slice<const FMA: bool, const W512: bool>(a: Activation, v: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if W512 && matches!(a, Activation::Silu | Activation::Sigmoid) {
        // SAFETY: `W512` is true only in the AVX-512 instance of a `dispatch!` body, which runs
        // after the CPU was found to have AVX-512.
        unsafe { super::logistic_x86::apply(v, a == Activation::Silu, false) };
        return;
    }
    match a {
        Activation::Relu => map_all(v, |x| x.max(0.0)),
        Activation::Relu6 => map_all(v, |x| x.clamp(0.0, 6.0)),
        Activation::LeakyRelu(s) => {
            let s = s as f32;
            map_all(v, |x| if x < 0.0 { x * s } else { x })
        }
        Activation::Silu => map_all(v, |x| x / (1.0 + exp_f32::<FMA>(-x))),
        Activation::HardSwish => map_all(v, |x| x * (x + 3.0).clamp(0.0, 6.0) / 6.0),
        Activation::HardSigmoid => map_all(v, |x| (x + 3.0).clamp(0.0, 6.0) / 6.0),
        Activation::Sigmoid => map_all(v, |x| 1.0 / (1.0 + exp_f32::<FMA>(-x))),
        Activation::Tanh => v.iter_mut().for_each(|x| *x = x.tanh()),
        Activation::Mish => v.iter_mut().for_each(|x| *x *= (x.max(0.0) + (-x.abs()).exp().ln_1p()).tanh()),
        Activation::Gelu => map_all(v, |x| 0.5 * x * (1.0 + erf_f32::<FMA>(x * std::f32::consts::FRAC_1_SQRT_2))),
    }
}

/// `x = f(x)` over `v` (one plain loop: the compiler vectorises it; blocks of fixed length
/// would make it vectorise across blocks with gathers instead).
#[inline(always)]
pub(crate) fn map_all(v: &mut [f32], f: impl Fn(f32) -> f32) {
    v.iter_mut().for_each(|x| *x = f(*x));
}

/// `a * b + c`: one fused multiply-add where the caller is compiled with FMA (`FMA`), else a
/// multiply and an add (a software `fma` would be slow). The two round differently, by at
/// most an ulp.
#[inline(always)]
pub(crate) fn mad<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// `erf` as a rational function on [-4, 4] (Eigen's/XLA's single-precision approximation,
/// within a few ulp; branch-free so it vectorizes).
#[inline(always)]
pub(crate) fn erf_f32<const FMA: bool>(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10_f32;
    p = mad::<FMA>(p, x2, 2.770_681_4e-8);
    p = mad::<FMA>(p, x2, -2.101_024e-6);
    p = mad::<FMA>(p, x2, -5.692_506_4e-5);
    p = mad::<FMA>(p, x2, -7.349_906_3e-4);
    p = mad::<FMA>(p, x2, -2.954_6e-3);
    p = mad::<FMA>(p, x2, -1.609_603_3e-2);
    let mut q = -1.456_607_2e-5_f32;
    q = mad::<FMA>(q, x2, -2.133_740_6e-4);
    q = mad::<FMA>(q, x2, -1.682_827e-3);
    q = mad::<FMA>(q, x2, -7.373_329e-3);
    q = mad::<FMA>(q, x2, -1.426_474e-2);
    x * p / q
}

/// `exp` for f32, branch-free and without float-to-int conversions so loops over it vectorise:
/// `2^n * p(r)` with `n = round(x / ln 2)` (rounded by adding 1.5 * 2^23, whose bits then hold
/// `n`), `r = x - n ln 2` (ln 2 split in two), a degree-6 polynomial (Cephes `expf`); within
/// 2 ulp of libm where the result is normal. The input is clamped to [-87.3, 88.7] (so
/// `1 / (1 + exp(-x))` saturates to 0 and 1).
#[inline(always)]
pub(crate) fn exp_f32<const FMA: bool>(x: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.7);
    let t = mad::<FMA>(x, std::f32::consts::LOG2_E, ROUND);
    let n = t - ROUND;
    let r = mad::<FMA>(n, 2.121_944_4e-4, mad::<FMA>(n, -0.693_359_4, x));
    let mut p = 1.987_569_1e-4_f32;
    p = mad::<FMA>(p, r, 1.398_199_9e-3);
    p = mad::<FMA>(p, r, 8.333_452e-3);
    p = mad::<FMA>(p, r, 4.166_579_6e-2);
    p = mad::<FMA>(p, r, 1.666_666_5e-1);
    p = mad::<FMA>(p, r, 5e-1);
    let e = mad::<FMA>(p * r, r, r + 1.0);
    // The low bits of `t` are `n` (two's complement); shifted into the exponent field, the
    // rest of `t`'s bits fall off.
    e * f32::from_bits(t.to_bits().wrapping_add(127) << 23)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_slice_sees_lanes_and_remainder() {
        let v: Vec<f32> = (0..37).map(|i| (i as f32 * 0.7).sin()).collect();
        let want = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        assert_eq!(max_slice(&v), want);
        for at in [3, 20, 35] {
            let mut w = v.clone();
            w[at] = 5.0;
            assert_eq!(max_slice(&w), 5.0, "max at {at}");
        }
        assert_eq!(max_slice(&[]), f32::NEG_INFINITY);
    }

    #[test]
    fn exp_and_erf_close_to_libm() {
        let worst = (-870..880).map(|i| i as f32 * 0.1).map(|x| ((exp_f32::<false>(x) as f64 - (x as f64).exp()) / (x as f64).exp()).abs()).fold(0.0, f64::max);
        assert!(worst < 1e-6, "exp {worst}");
        let worst = (-6000..6000).map(|i| i as f32 * 1e-3).map(|x| (erf_f32::<false>(x) as f64 - libm::erf(x as f64)).abs()).fold(0.0, f64::max);
        assert!(worst < 1e-6, "erf {worst}");
    }

    #[test]
    fn silu_and_sigmoid_saturate() {
        let mut v = vec![-200.0f32, -90.0, -20.0, 0.0, 20.0, 90.0, 200.0];
        let want: Vec<f32> = v.iter().map(|&x| (x as f64 / (1.0 + (-x as f64).exp())) as f32).collect();
        act_slice::<false, false>(Activation::Silu, &mut v);
        for (a, b) in v.iter().zip(&want) {
            assert!((a - b).abs() <= 1e-6 * (1.0 + b.abs()), "{a} vs {b}");
        }
        let mut s = vec![-200.0f32, 0.0, 200.0];
        act_slice::<false, false>(Activation::Sigmoid, &mut s);
        assert!(s[0] < 1e-30 && s[1] == 0.5 && s[2] == 1.0, "{s:?}");
    }

    #[test]
    fn mish_matches_the_portable_kernel() {
        let x = candle_core::Tensor::arange(-120i64, 120, &candle_core::Device::Cpu).unwrap().to_dtype(candle_core::DType::F32).unwrap().affine(0.1, 0.0).unwrap();
        let mut v: Vec<f32> = x.to_vec1().unwrap();
        act_slice::<false, false>(Activation::Mish, &mut v);
        let want: Vec<f32> = crate::kernels::mish(&x).unwrap().to_vec1().unwrap();
        let worst = v.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(worst < 1e-5, "{worst}");
    }

    #[test]
    fn levels_are_ordered_and_parsed() {
        assert!(Isa::Portable < Isa::Avx2 && Isa::Avx2 < Isa::Avx512);
        assert_eq!(Isa::parse("AVX2"), Some(Isa::Avx2));
        assert_eq!(Isa::parse("sse"), None);
        assert!(Isa::all_available().contains(&Isa::detect()));
        assert_eq!(Isa::Avx512.capped(), Isa::detect());
    }
}
