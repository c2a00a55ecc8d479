//! Drawing detections on an image: box outlines and a label (class name and score) in a
//! tiny built-in 5x7 bitmap font, so annotated images need no font files or system libraries.

use crate::detect::Detection;
use anyhow::{bail, Context, Result};
pub use image::RgbImage;
use image::{ImageFormat, Rgb};
use std::path::Path;

/// Glyph width and height of the built-in font, in font pixels.
pub const GLYPH: (u32, u32) = (5, 7);

/// The 5x7 glyph of `c` (one byte per row, bit 4 = leftmost column). Letters are drawn as
/// capitals; characters outside `A-Z 0-9 space . - : / _ %` draw as `?`.
fn glyph(c: char) -> [u8; 7] {
    match c.to_ascii_uppercase() {
        'A' => [0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'B' => [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        'D' => [0x1E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x1E],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'F' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
        'G' => [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
        'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        'Q' => [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D],
        'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
        'X' => [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
        'Y' => [0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04],
        'Z' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        ' ' => [0; 7],
        '.' => [0, 0, 0, 0, 0, 0x0C, 0x0C],
        '-' => [0, 0, 0, 0x1F, 0, 0, 0],
        ':' => [0, 0x0C, 0x0C, 0, 0x0C, 0x0C, 0],
        '/' => [0x01, 0x02, 0x02, 0x04, 0x08, 0x08, 0x10],
        '_' => [0, 0, 0, 0, 0, 0, 0x1F],
        '%' => [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03],
        _ => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x00, 0x04],
    }
}

/// Width and height in image pixels of `text` drawn at `scale` (one font pixel of spacing
/// between glyphs).
pub fn text_size(text: &str, scale: u32) -> (u32, u32) {
    let n = text.chars().count() as u32;
    ((n * (GLYPH.0 + 1)).saturating_sub(1) * scale, GLYPH.1 * scale)
}

fn put(img: &mut RgbImage, x: i64, y: i64, c: Rgb<u8>) {
    if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
        img.put_pixel(x as u32, y as u32, c);
    }
}

/// Fills the rectangle `[x1, x2) x [y1, y2)`, clipped to the image.
pub fn fill_rect(img: &mut RgbImage, x1: i64, y1: i64, x2: i64, y2: i64, c: Rgb<u8>) {
    let (x1, x2) = (x1.max(0), x2.min(img.width() as i64));
    let (y1, y2) = (y1.max(0), y2.min(img.height() as i64));
    for y in y1..y2 {
        for x in x1..x2 {
            img.put_pixel(x as u32, y as u32, c);
        }
    }
}

/// Draws the outline of `[x1, y1, x2, y2]` (inclusive corners), `thickness` pixels inwards,
/// clipped to the image.
pub fn draw_rect(img: &mut RgbImage, x1: i64, y1: i64, x2: i64, y2: i64, thickness: i64, c: Rgb<u8>) {
    let t = thickness.max(1);
    fill_rect(img, x1, y1, x2 + 1, y1 + t, c);
    fill_rect(img, x1, y2 + 1 - t, x2 + 1, y2 + 1, c);
    fill_rect(img, x1, y1, x1 + t, y2 + 1, c);
    fill_rect(img, x2 + 1 - t, y1, x2 + 1, y2 + 1, c);
}

/// Draws `text` with its top-left corner at `(x, y)`, each font pixel a `scale` x `scale` square.
pub fn draw_text(img: &mut RgbImage, x: i64, y: i64, text: &str, scale: u32, c: Rgb<u8>) {
    let s = scale.max(1) as i64;
    for (i, ch) in text.chars().enumerate() {
        let gx = x + i as i64 * (GLYPH.0 as i64 + 1) * s;
        for (row, bits) in glyph(ch).iter().enumerate() {
            for col in 0..GLYPH.0 as i64 {
                if bits & (0x10 >> col) != 0 {
                    for dy in 0..s {
                        for dx in 0..s {
                            put(img, gx + col * s + dx, y + row as i64 * s + dy, c);
                        }
                    }
                }
            }
        }
    }
}

/// A distinct, saturated colour per class (golden-ratio hue steps).
pub fn class_color(class: usize) -> Rgb<u8> {
    let h = (class as f32 * 0.618_034).fract() * 6.0;
    let x = (1.0 - ((h % 2.0) - 1.0).abs()) * 255.0;
    let (r, g, b) = match h as u32 {
        0 => (255.0, x, 0.0),
        1 => (x, 255.0, 0.0),
        2 => (0.0, 255.0, x),
        3 => (0.0, x, 255.0),
        4 => (x, 0.0, 255.0),
        _ => (255.0, 0.0, x),
    };
    Rgb([r as u8, g as u8, b as u8])
}

/// Draws each detection: its box in the class colour and, above the box (inside it when there
/// is no room), a filled tag with `label score` in black or white, whichever reads better.
/// Line width and font size grow with the image.
pub fn draw_detections(img: &mut RgbImage, dets: &[Detection]) {
    let side = img.width().min(img.height());
    let thickness = (side / 250).max(2) as i64;
    let scale = (side / 300).max(1);
    for d in dets {
        let c = class_color(d.class);
        let [x1, y1, x2, y2] = d.bbox.map(|v| v.round() as i64);
        draw_rect(img, x1, y1, x2, y2, thickness, c);
        let text = format!("{} {:.2}", d.label, d.score);
        let (tw, th) = text_size(&text, scale);
        let m = scale as i64 * 2;
        let (tw, th) = (tw as i64 + 2 * m, th as i64 + 2 * m);
        let x = x1.clamp(0, (img.width() as i64 - tw).max(0));
        let y = if y1 - th >= 0 { y1 - th } else { y1.max(0) };
        fill_rect(img, x, y, x + tw, y + th, c);
        let luma = 0.299 * c[0] as f32 + 0.587 * c[1] as f32 + 0.114 * c[2] as f32;
        let ink = if luma > 140.0 { Rgb([0, 0, 0]) } else { Rgb([255, 255, 255]) };
        draw_text(img, x + m, y + m, &text, scale, ink);
    }
}

/// The format an annotated image is written in, from `path`'s extension: JPEG, PNG or BMP.
pub fn check_format(path: &Path) -> Result<ImageFormat> {
    match ImageFormat::from_path(path) {
        Ok(f @ (ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::Bmp)) => Ok(f),
        _ => bail!("cannot write {}: give a .jpg, .png or .bmp file name (or a folder)", path.display()),
    }
}

/// Writes `img` to `path` in the format its extension names (JPEG at quality 90).
pub fn save_image(img: &RgbImage, path: &Path) -> Result<()> {
    let format = check_format(path)?;
    let write = || -> Result<()> {
        let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
        match format {
            ImageFormat::Jpeg => image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90).encode_image(img)?,
            f => img.write_to(&mut out, f)?,
        }
        std::io::Write::flush(&mut out)?;
        Ok(())
    };
    write().with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_boxes_land_where_expected() {
        let mut img = RgbImage::new(40, 20);
        draw_text(&mut img, 1, 1, "I", 1, Rgb([255, 255, 255]));
        // 'I' = 01110 on its first row: columns 1..4 of the glyph lit.
        let row: Vec<u8> = (1..6).map(|x| img.get_pixel(x, 1)[0]).collect();
        assert_eq!(row, vec![0, 255, 255, 255, 0]);
        assert_eq!(text_size("ab", 2), (22, 14));
        let mut img = RgbImage::new(10, 10);
        draw_rect(&mut img, 2, 2, 7, 7, 1, Rgb([9, 9, 9]));
        assert_eq!((img.get_pixel(2, 5)[0], img.get_pixel(7, 7)[0], img.get_pixel(4, 4)[0]), (9, 9, 0));
        // Out-of-image boxes and text are clipped, not a panic.
        draw_rect(&mut img, -5, -5, 50, 50, 3, Rgb([1, 1, 1]));
        draw_text(&mut img, 8, 8, "xyz?", 3, Rgb([1, 1, 1]));
    }

    #[test]
    fn draws_labelled_detections() {
        let mut img = RgbImage::new(300, 200);
        let d = Detection { class: 16, label: "dog".into(), score: 0.65, bbox: [50.0, 60.0, 250.0, 190.0] };
        draw_detections(&mut img, &[d]);
        assert_eq!(*img.get_pixel(50, 100), class_color(16));
        // The tag sits above the box.
        assert_eq!(*img.get_pixel(51, 50), class_color(16));
    }
}
