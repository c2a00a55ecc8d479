//! Resamplers that reproduce the reference libraries bit for bit (as far as practical) on
//! interleaved 8-bit RGB images: PIL's antialiasing separable convolution and OpenCV's
//! `cv2.resize` (INTER_LINEAR / INTER_CUBIC / INTER_NEAREST). The `image` crate's filters do
//! not match either reference.

/// An interleaved RGB8 image.
#[derive(Clone, Debug, PartialEq)]
pub struct Rgb8 {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

const CN: usize = 3;

impl Rgb8 {
    pub fn new(width: usize, height: usize, data: Vec<u8>) -> Rgb8 {
        assert_eq!(data.len(), width * height * CN);
        Rgb8 { width, height, data }
    }
}

// ------------------------------------------------------------------ PIL (Resample.c) --

/// PIL filters (`Image.NEAREST` is handled separately).
#[derive(Clone, Copy, Debug)]
pub enum PilFilter {
    Bilinear,
    Bicubic,
}

impl PilFilter {
    fn support(self) -> f64 {
        match self {
            PilFilter::Bilinear => 1.0,
            PilFilter::Bicubic => 2.0,
        }
    }
    fn eval(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            PilFilter::Bilinear => {
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            PilFilter::Bicubic => {
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// `precompute_coeffs` + `normalize_coeffs_8bpc` of Pillow's Resample.c: per output pixel
/// the first input index and the fixed-point weights.
fn pil_coeffs(in_size: usize, out_size: usize, filter: PilFilter) -> Vec<(usize, Vec<i32>)> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ss = 1.0 / filterscale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let xmin = ((center - support + 0.5) as i64).max(0) as usize; // C cast truncates
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let n = xmax.saturating_sub(xmin);
            let mut w: Vec<f64> = (0..n).map(|x| filter.eval((x as f64 + xmin as f64 - center + 0.5) * ss)).collect();
            let total: f64 = w.iter().sum();
            if total != 0.0 {
                for v in &mut w {
                    *v /= total;
                }
            }
            let k = w
                .iter()
                .map(|&v| {
                    let s = v * (1u32 << PRECISION_BITS) as f64;
                    if v < 0.0 {
                        (-0.5 + s) as i32
                    } else {
                        (0.5 + s) as i32
                    }
                })
                .collect();
            (xmin, k)
        })
        .collect()
}

#[inline]
fn clip8(v: i32) -> u8 {
    if v >= (1 << PRECISION_BITS << 8) {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

/// `Image.resize((w, h), BILINEAR | BICUBIC)` of Pillow on an RGB image: horizontal pass,
/// 8-bit intermediate, vertical pass, fixed-point weights; antialiases when shrinking.
pub fn pil_resize(src: &Rgb8, out_w: usize, out_h: usize, filter: PilFilter) -> Rgb8 {
    let mut img = src.clone();
    if out_w != img.width {
        let co = pil_coeffs(img.width, out_w, filter);
        let mut out = vec![0u8; out_w * img.height * CN];
        for y in 0..img.height {
            let row = &img.data[y * img.width * CN..(y + 1) * img.width * CN];
            for (x, (xmin, k)) in co.iter().enumerate() {
                let mut ss = [1i32 << (PRECISION_BITS - 1); CN];
                for (i, &w) in k.iter().enumerate() {
                    let p = &row[(xmin + i) * CN..];
                    for c in 0..CN {
                        ss[c] += p[c] as i32 * w;
                    }
                }
                for c in 0..CN {
                    out[(y * out_w + x) * CN + c] = clip8(ss[c]);
                }
            }
        }
        img = Rgb8::new(out_w, img.height, out);
    }
    if out_h != img.height {
        let co = pil_coeffs(img.height, out_h, filter);
        let rw = img.width * CN;
        let mut out = vec![0u8; rw * out_h];
        let mut ss = vec![0i32; rw];
        for (y, (ymin, k)) in co.iter().enumerate() {
            ss.iter_mut().for_each(|s| *s = 1 << (PRECISION_BITS - 1));
            for (i, &w) in k.iter().enumerate() {
                let row = &img.data[(ymin + i) * rw..(ymin + i + 1) * rw];
                for (s, &p) in ss.iter_mut().zip(row) {
                    *s += p as i32 * w;
                }
            }
            for (o, &s) in out[y * rw..(y + 1) * rw].iter_mut().zip(&ss) {
                *o = clip8(s);
            }
        }
        img = Rgb8::new(img.width, out_h, out);
    }
    img
}

/// Pillow's NEAREST resize: the input pixel under each output pixel centre.
pub fn pil_nearest(src: &Rgb8, out_w: usize, out_h: usize) -> Rgb8 {
    let map = |o: usize, n_in: usize, n_out: usize| -> usize {
        let s = n_in as f64 / n_out as f64;
        (((o as f64 + 0.5) * s) as usize).min(n_in - 1)
    };
    gather(src, out_w, out_h, |x| map(x, src.width, out_w), |y| map(y, src.height, out_h))
}

fn gather(src: &Rgb8, out_w: usize, out_h: usize, fx: impl Fn(usize) -> usize, fy: impl Fn(usize) -> usize) -> Rgb8 {
    let xs: Vec<usize> = (0..out_w).map(fx).collect();
    let mut out = Vec::with_capacity(out_w * out_h * CN);
    for y in 0..out_h {
        let sy = fy(y);
        for &sx in &xs {
            let i = (sy * src.width + sx) * CN;
            out.extend_from_slice(&src.data[i..i + CN]);
        }
    }
    Rgb8::new(out_w, out_h, out)
}

// ------------------------------------------------------------- OpenCV (resize.cpp) --

/// `cv2.resize(img, (w, h), interpolation=INTER_NEAREST)`: `floor(dst * src/dst)`.
pub fn cv_nearest(src: &Rgb8, out_w: usize, out_h: usize) -> Rgb8 {
    let fx = out_w as f64 / src.width as f64;
    let fy = out_h as f64 / src.height as f64;
    let (ix, iy) = (1.0 / fx, 1.0 / fy);
    gather(
        src,
        out_w,
        out_h,
        |x| ((x as f64 * ix).floor() as usize).min(src.width - 1),
        |y| ((y as f64 * iy).floor() as usize).min(src.height - 1),
    )
}

const COEF_BITS: u32 = 11;
const COEF_SCALE: f32 = (1 << COEF_BITS) as f32;

/// Source index and fractional position, as OpenCV computes them (`float fx`).
fn cv_linear_tab(in_size: usize, out_size: usize) -> Vec<(usize, usize, [i32; 2])> {
    let scale = in_size as f64 / out_size as f64;
    (0..out_size)
        .map(|d| {
            let mut f = ((d as f64 + 0.5) * scale - 0.5) as f32;
            let mut s = f.floor() as i64;
            f -= s as f32;
            if s < 0 {
                f = 0.0;
                s = 0;
            }
            if s >= in_size as i64 - 1 {
                f = 0.0;
                s = in_size as i64 - 1;
            }
            let s = s as usize;
            // saturate_cast<short>(float) rounds half to even.
            let a0 = ((1.0 - f) * COEF_SCALE).round_ties_even() as i32;
            let a1 = (f * COEF_SCALE).round_ties_even() as i32;
            (s, (s + 1).min(in_size - 1), [a0, a1])
        })
        .collect()
}

/// `cv2.resize(img, (w, h), interpolation=INTER_LINEAR)` on 8-bit images: half-pixel centres,
/// no antialiasing, 11-bit fixed-point weights, the vectorised vertical pass's rounding;
/// an exact 2x shrink uses INTER_AREA as OpenCV does.
pub fn cv_linear(src: &Rgb8, out_w: usize, out_h: usize) -> Rgb8 {
    if out_w * 2 == src.width && out_h * 2 == src.height {
        let mut out = Vec::with_capacity(out_w * out_h * CN);
        let rw = src.width * CN;
        for y in 0..out_h {
            for x in 0..out_w {
                for c in 0..CN {
                    let i = 2 * y * rw + 2 * x * CN + c;
                    let s = src.data[i] as u32 + src.data[i + CN] as u32 + src.data[i + rw] as u32 + src.data[i + rw + CN] as u32;
                    out.push(((s + 2) >> 2) as u8);
                }
            }
        }
        return Rgb8::new(out_w, out_h, out);
    }
    let xt = cv_linear_tab(src.width, out_w);
    let yt = cv_linear_tab(src.height, out_h);
    let rw = out_w * CN;
    let hrow = |y: usize| -> Vec<i32> {
        let row = &src.data[y * src.width * CN..(y + 1) * src.width * CN];
        let mut out = Vec::with_capacity(rw);
        for &(s0, s1, [a0, a1]) in &xt {
            for c in 0..CN {
                out.push(row[s0 * CN + c] as i32 * a0 + row[s1 * CN + c] as i32 * a1);
            }
        }
        out
    };
    // Elements handled by OpenCV's SIMD loop (8 lanes); the tail uses the scalar rounding.
    let simd_end = rw - rw % 8;
    let mut out = vec![0u8; rw * out_h];
    let mut rows: Vec<Option<Vec<i32>>> = vec![None; src.height];
    for &(s0, s1, _) in &yt {
        for s in [s0, s1] {
            if rows[s].is_none() {
                rows[s] = Some(hrow(s));
            }
        }
    }
    for (y, &(s0, s1, [b0, b1])) in yt.iter().enumerate() {
        let (r0, r1) = (rows[s0].as_ref().unwrap(), rows[s1].as_ref().unwrap());
        let o = &mut out[y * rw..(y + 1) * rw];
        for x in 0..rw {
            let v = if x < simd_end {
                ((((r0[x] >> 4) * b0) >> 16) + (((r1[x] >> 4) * b1) >> 16) + 2) >> 2
            } else {
                (r0[x] * b0 + r1[x] * b1 + (1 << 21)) >> 22
            };
            o[x] = v.clamp(0, 255) as u8;
        }
    }
    Rgb8::new(out_w, out_h, out)
}

fn cubic_weights(f: f32) -> [f32; 4] {
    const A: f32 = -0.75;
    let c0 = ((A * (f + 1.0) - 5.0 * A) * (f + 1.0) + 8.0 * A) * (f + 1.0) - 4.0 * A;
    let c1 = ((A + 2.0) * f - (A + 3.0)) * f * f + 1.0;
    let c2 = ((A + 2.0) * (1.0 - f) - (A + 3.0)) * (1.0 - f) * (1.0 - f) + 1.0;
    [c0, c1, c2, 1.0 - c0 - c1 - c2]
}

/// `cv2.resize(..., interpolation=INTER_CUBIC)`: half-pixel centres, a = -0.75, replicated
/// borders, no antialiasing. Weights are rounded to OpenCV's 11-bit fixed point.
pub fn cv_cubic(src: &Rgb8, out_w: usize, out_h: usize) -> Rgb8 {
    let tab = |in_size: usize, out_size: usize| -> Vec<([usize; 4], [i32; 4])> {
        let scale = in_size as f64 / out_size as f64;
        (0..out_size)
            .map(|d| {
                let f = ((d as f64 + 0.5) * scale - 0.5) as f32;
                let s = f.floor();
                let w = cubic_weights(f - s);
                let s = s as i64;
                let idx = [0, 1, 2, 3].map(|k| (s - 1 + k).clamp(0, in_size as i64 - 1) as usize);
                let iw = w.map(|v| (v * COEF_SCALE).round_ties_even() as i32);
                (idx, iw)
            })
            .collect()
    };
    let xt = tab(src.width, out_w);
    let yt = tab(src.height, out_h);
    let rw = out_w * CN;
    let rows: Vec<Vec<i32>> = (0..src.height)
        .map(|y| {
            let row = &src.data[y * src.width * CN..(y + 1) * src.width * CN];
            let mut out = Vec::with_capacity(rw);
            for (idx, w) in &xt {
                for c in 0..CN {
                    out.push((0..4).map(|k| row[idx[k] * CN + c] as i32 * w[k]).sum());
                }
            }
            out
        })
        .collect();
    let mut out = vec![0u8; rw * out_h];
    for (y, (idx, w)) in yt.iter().enumerate() {
        for x in 0..rw {
            let s: i64 = (0..4).map(|k| rows[idx[k]][x] as i64 * w[k] as i64).sum();
            out[y * rw + x] = ((s + (1 << 21)) >> 22).clamp(0, 255) as u8;
        }
    }
    Rgb8::new(out_w, out_h, out)
}
