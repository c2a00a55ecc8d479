//! From an image file to the network's input tensor, reproducing the reference pipelines:
//! torchvision on PIL images (`Resize(int)` + `CenterCrop`, PIL's antialiasing resampler),
//! OpenCV / darknet plain resizes (`cv2.resize`, half-pixel centres, no antialiasing) and the
//! Ultralytics letterbox.

pub mod resize;
#[cfg(test)]
mod tests;

use anyhow::{bail, Context, Result};
use image::DynamicImage;
use resize::{PilFilter, Rgb8};
use std::path::Path;
use tlc_compiler::meta::{ChannelOrder, Interpolation, Preprocess, Resize};

/// Gray value of the letterbox padding (Ultralytics).
pub const LETTERBOX_FILL: u8 = 114;

/// Decodes an image file, recognising JPEG, PNG, GIF, BMP and WebP by content (not by
/// extension), and converts it to 8-bit RGB as PIL's `.convert("RGB")` does: alpha is dropped
/// (not composited), gray is replicated, 16-bit samples keep their high byte.
/// EXIF orientation is not applied (PIL does not either).
pub fn load_image(path: &Path) -> Result<DynamicImage> {
    let decoded = image_reader(path)
        .and_then(|r| match r.format() {
            Some(image::ImageFormat::Jpeg) => decode_jpeg(path).or_else(|_| Ok(image_reader(path)?.decode()?)),
            _ => Ok(r.decode()?),
        })
        .with_context(|| format!("cannot read image {}", path.display()))?;
    Ok(DynamicImage::ImageRgb8(to_rgb8(&decoded)))
}

/// JPEG through libjpeg-turbo's decoder (mozjpeg), so pixels equal PIL's and OpenCV's exactly
/// (the `image` crate's decoder differs by up to 3 levels, enough to move a box by a pixel).
/// Colour spaces libjpeg cannot turn into RGB (CMYK) are left to the `image` crate. libjpeg
/// reports corrupt data by unwinding (mozjpeg's `resume_unwind`, no panic message), caught here.
fn decode_jpeg(path: &Path) -> Result<DynamicImage> {
    let bytes = std::fs::read(path)?;
    let decode = || -> std::io::Result<(u32, u32, Vec<[u8; 3]>)> {
        let mut img = mozjpeg::Decompress::new_mem(&bytes)?.rgb()?;
        let (w, h) = (img.width() as u32, img.height() as u32);
        let pixels = img.read_scanlines()?;
        img.finish()?;
        Ok((w, h, pixels))
    };
    let (w, h, pixels) = match std::panic::catch_unwind(decode) {
        Ok(r) => r?,
        Err(payload) => bail!("corrupt JPEG: {}", payload.downcast_ref::<String>().map(String::as_str).unwrap_or("libjpeg error")),
    };
    let rgb = image::RgbImage::from_raw(w, h, pixels.into_flattened()).context("JPEG size does not match its pixels")?;
    Ok(DynamicImage::ImageRgb8(rgb))
}

/// Checks from its first bytes that `path` is an image tlc can decode, without decoding it
/// (to fail before a long weights download or forward pass).
pub fn check_image(path: &Path) -> Result<()> {
    image_reader(path).map(|_| ()).with_context(|| format!("cannot read image {}", path.display()))
}

fn image_reader(path: &Path) -> Result<image::ImageReader<std::io::BufReader<std::fs::File>>> {
    let reader = image::ImageReader::open(path)?.with_guessed_format()?;
    if reader.format().is_none() {
        bail!("unrecognised image format (expected JPEG, PNG, GIF, BMP or WebP)");
    }
    Ok(reader)
}

/// PIL-style conversion of any decoded image to 8-bit RGB (alpha dropped, high byte of
/// 16-bit samples, float samples clamped to 0..1 and rounded).
pub fn to_rgb8(img: &DynamicImage) -> image::RgbImage {
    use DynamicImage as D;
    let (w, h) = (img.width(), img.height());
    let px = |f: &dyn Fn(usize) -> [u8; 3]| -> image::RgbImage {
        let mut out = Vec::with_capacity(w as usize * h as usize * 3);
        for i in 0..(w as usize * h as usize) {
            out.extend_from_slice(&f(i));
        }
        image::RgbImage::from_raw(w, h, out).expect("buffer size")
    };
    let hi = |v: u16| (v >> 8) as u8;
    match img {
        D::ImageRgb8(b) => b.clone(),
        D::ImageRgba8(b) => px(&|i| [b.as_raw()[4 * i], b.as_raw()[4 * i + 1], b.as_raw()[4 * i + 2]]),
        D::ImageLuma8(b) => px(&|i| [b.as_raw()[i]; 3]),
        D::ImageLumaA8(b) => px(&|i| [b.as_raw()[2 * i]; 3]),
        D::ImageRgb16(b) => px(&|i| [hi(b.as_raw()[3 * i]), hi(b.as_raw()[3 * i + 1]), hi(b.as_raw()[3 * i + 2])]),
        D::ImageRgba16(b) => px(&|i| [hi(b.as_raw()[4 * i]), hi(b.as_raw()[4 * i + 1]), hi(b.as_raw()[4 * i + 2])]),
        D::ImageLuma16(b) => px(&|i| [hi(b.as_raw()[i]); 3]),
        D::ImageLumaA16(b) => px(&|i| [hi(b.as_raw()[2 * i]); 3]),
        // Float images and future variants: drop alpha the same way.
        other => other.to_rgb8(),
    }
}

/// A preprocessed image: the input tensor's data and how it maps back to the original.
///
/// A point `(y, x)` of the input maps to the original image at
/// `((y - pad.0) / scale.0, (x - pad.1) / scale.1)`.
#[derive(Clone, Debug, PartialEq)]
pub struct Prepared {
    /// `[3, height, width]` values, channel-major, in the network's channel order.
    pub data: Vec<f32>,
    pub height: usize,
    pub width: usize,
    /// Decoded image size `(height, width)`.
    pub original: (usize, usize),
    /// Resize factors `(y, x)`: resized size / original size (the letterbox's single gain
    /// for [`Resize::Letterbox`], as Ultralytics maps boxes back with it).
    pub scale: (f32, f32),
    /// Offset `(top, left)` in input pixels of the original image's top-left corner: the
    /// letterbox padding, or minus the center-crop offset.
    pub pad: (f32, f32),
}

/// Python's `round` (half to even), as the references compute crop and pad offsets.
fn py_round(v: f64) -> i64 {
    v.round_ties_even() as i64
}

fn resize_rgb(img: &Rgb8, w: usize, h: usize, interp: Interpolation, antialias: bool) -> Rgb8 {
    if w == img.width && h == img.height {
        return img.clone();
    }
    match (interp, antialias) {
        (Interpolation::Bilinear, true) => resize::pil_resize(img, w, h, PilFilter::Bilinear),
        (Interpolation::Bicubic, true) => resize::pil_resize(img, w, h, PilFilter::Bicubic),
        (Interpolation::Nearest, true) => resize::pil_nearest(img, w, h),
        (Interpolation::Bilinear, false) => resize::cv_linear(img, w, h),
        (Interpolation::Bicubic, false) => resize::cv_cubic(img, w, h),
        (Interpolation::Nearest, false) => resize::cv_nearest(img, w, h),
    }
}

/// torchvision `Resize(int)` output size `(h, w)`: shorter side to `s`, longer side
/// `int(s * long / short)`.
pub fn shorter_side_size(h: usize, w: usize, s: usize) -> (usize, usize) {
    let (short, long) = if w <= h { (w, h) } else { (h, w) };
    let new_long = (s as f64 * long as f64 / short as f64) as usize;
    if w <= h {
        (new_long, s)
    } else {
        (s, new_long)
    }
}

/// torchvision `CenterCrop`: zero-pads first when the crop is larger than the image, then
/// crops at `int(round((h - ch) / 2))`. Returns the image and the (top, left) offset of the
/// crop in the input (negative when padded).
fn center_crop(img: &Rgb8, ch: usize, cw: usize) -> (Rgb8, (i64, i64)) {
    let (h, w) = (img.height as i64, img.width as i64);
    let (ch_, cw_) = (ch as i64, cw as i64);
    // Padding torchvision applies when the crop exceeds the image: left/top = (c - s) // 2.
    let pad_t = if ch_ > h { (ch_ - h) / 2 } else { 0 };
    let pad_l = if cw_ > w { (cw_ - w) / 2 } else { 0 };
    let (ph, pw) = (h.max(ch_), w.max(cw_));
    let top = py_round((ph - ch_) as f64 / 2.0);
    let left = py_round((pw - cw_) as f64 / 2.0);
    let mut out = vec![0u8; ch * cw * 3];
    for y in 0..ch_ {
        let sy = y + top - pad_t;
        if sy < 0 || sy >= h {
            continue;
        }
        for x in 0..cw_ {
            let sx = x + left - pad_l;
            if sx < 0 || sx >= w {
                continue;
            }
            let si = ((sy * w + sx) * 3) as usize;
            let di = ((y * cw_ + x) * 3) as usize;
            out[di..di + 3].copy_from_slice(&img.data[si..si + 3]);
        }
    }
    (Rgb8::new(cw, ch, out), (top - pad_t, left - pad_l))
}

/// Ultralytics `LetterBox(new_shape, auto=False, scaleup=True, center=True)`.
fn letterbox(img: &Rgb8, th: usize, tw: usize, interp: Interpolation, antialias: bool) -> (Rgb8, f64, (usize, usize)) {
    let (h0, w0) = (img.height as f64, img.width as f64);
    let r = (th as f64 / h0).min(tw as f64 / w0);
    let nw = py_round(w0 * r).max(1) as usize;
    let nh = py_round(h0 * r).max(1) as usize;
    let dw = (tw as f64 - nw as f64) / 2.0;
    let dh = (th as f64 - nh as f64) / 2.0;
    let resized = resize_rgb(img, nw, nh, interp, antialias);
    let top = py_round(dh - 0.1).max(0) as usize;
    let left = py_round(dw - 0.1).max(0) as usize;
    let mut out = vec![LETTERBOX_FILL; th * tw * 3];
    for y in 0..nh.min(th - top) {
        for x in 0..nw.min(tw - left) {
            let si = (y * nw + x) * 3;
            let di = ((y + top) * tw + x + left) * 3;
            out[di..di + 3].copy_from_slice(&resized.data[si..si + 3]);
        }
    }
    (Rgb8::new(tw, th, out), r, (top, left))
}

/// Resizes, crops and normalises `img` into the network's input as configured by `p`,
/// following the reference library of each policy exactly:
/// - [`Resize::ShorterSide`] + crop: torchvision on PIL (`Resize(s)` then `CenterCrop`);
/// - [`Resize::Exact`]: `cv2.resize` to `(w, h)` (darknet / `cv2.dnn.blobFromImage`);
/// - [`Resize::Letterbox`]: Ultralytics `LetterBox` with gray 114 padding.
///
/// The filter follows `p.interpolation`; with `p.antialias` the PIL resampler is used
/// (antialiasing when shrinking), without it the OpenCV one.
pub fn preprocess(img: &DynamicImage, p: &Preprocess) -> Result<Prepared> {
    let rgb = to_rgb8(img);
    let (w0, h0) = (rgb.width() as usize, rgb.height() as usize);
    if w0 == 0 || h0 == 0 {
        bail!("empty image ({w0}x{h0})");
    }
    let src = Rgb8::new(w0, h0, rgb.into_raw());
    let (mut img, scale, mut pad) = match p.resize {
        Resize::None => (src, (1.0f64, 1.0f64), (0.0f64, 0.0f64)),
        Resize::ShorterSide(s) => {
            if s == 0 {
                bail!("resize: shorter side must be positive");
            }
            let (h, w) = shorter_side_size(h0, w0, s);
            if h == 0 || w == 0 {
                bail!("resize: image {w0}x{h0} is too elongated for shorter side {s}");
            }
            let r = resize_rgb(&src, w, h, p.interpolation, p.antialias);
            (r, (h as f64 / h0 as f64, w as f64 / w0 as f64), (0.0, 0.0))
        }
        Resize::Exact(h, w) => {
            if h == 0 || w == 0 {
                bail!("resize: size must be positive, got {h}x{w}");
            }
            let r = resize_rgb(&src, w, h, p.interpolation, p.antialias);
            (r, (h as f64 / h0 as f64, w as f64 / w0 as f64), (0.0, 0.0))
        }
        Resize::Letterbox(h, w) => {
            if h == 0 || w == 0 {
                bail!("letterbox: size must be positive, got {h}x{w}");
            }
            let (r, gain, (top, left)) = letterbox(&src, h, w, p.interpolation, p.antialias);
            (r, (gain, gain), (top as f64, left as f64))
        }
    };
    if let Some((ch, cw)) = p.crop {
        if ch == 0 || cw == 0 {
            bail!("crop: size must be positive, got {ch}x{cw}");
        }
        let (c, (top, left)) = center_crop(&img, ch, cw);
        img = c;
        pad = (pad.0 - top as f64, pad.1 - left as f64);
    }
    if !p.scale.is_finite() || p.std.iter().any(|&s| s == 0.0 || !s.is_finite()) {
        bail!("normalisation: scale must be finite and std non-zero (scale {}, std {:?})", p.scale, p.std);
    }
    let (h, w) = (img.height, img.width);
    let n = h * w;
    let mut data = vec![0f32; 3 * n];
    for c in 0..3 {
        let src_c = match p.channels {
            ChannelOrder::Rgb => c,
            ChannelOrder::Bgr => 2 - c,
        };
        let (m, s) = (p.mean[c], p.std[c]);
        let plane = &mut data[c * n..(c + 1) * n];
        for (i, v) in plane.iter_mut().enumerate() {
            *v = (img.data[i * 3 + src_c] as f32 * p.scale - m) / s;
        }
    }
    Ok(Prepared {
        data,
        height: h,
        width: w,
        original: (h0, w0),
        scale: (scale.0 as f32, scale.1 as f32),
        pad: (pad.0 as f32, pad.1 as f32),
    })
}

impl Prepared {
    /// The data as a `[1, 3, height, width]` tensor on `device`.
    pub fn to_tensor(&self, device: &candle_core::Device) -> Result<candle_core::Tensor> {
        Ok(candle_core::Tensor::from_slice(&self.data, (1, 3, self.height, self.width), device)?)
    }
}
