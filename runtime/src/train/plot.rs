//! `curves.png` (loss and accuracy per epoch, training against validation) and
//! `confusion.png`, drawn with the `image` crate and the built-in 5x7 font of
//! [`crate::draw`]: no plotting library, font file or system dependency.

use super::report::Epoch;
use crate::draw::{draw_rect, draw_text, fill_rect, text_size, RgbImage};
use crate::weights::write_atomic;
use anyhow::Result;
use image::Rgb;
use std::path::Path;

const WHITE: Rgb<u8> = Rgb([255, 255, 255]);
const INK: Rgb<u8> = Rgb([40, 40, 40]);
const GRID: Rgb<u8> = Rgb([225, 225, 225]);
const TRAIN: Rgb<u8> = Rgb([31, 119, 180]);
const VAL: Rgb<u8> = Rgb([255, 127, 14]);
const PHASE: Rgb<u8> = Rgb([150, 150, 150]);

fn put(img: &mut RgbImage, x: i64, y: i64, c: Rgb<u8>) {
    if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
        img.put_pixel(x as u32, y as u32, c);
    }
}

/// A line two pixels wide (Bresenham).
fn line(img: &mut RgbImage, (x0, y0): (i64, i64), (x1, y1): (i64, i64), c: Rgb<u8>) {
    let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
    let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
    let (mut x, mut y, mut err) = (x0, y0, dx + dy);
    loop {
        for (ox, oy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
            put(img, x + ox, y + oy, c);
        }
        if x == x1 && y == y1 {
            break;
        }
        let e2 = 2 * err;
        if e2 >= dy {
            err += dy;
            x += sx;
        }
        if e2 <= dx {
            err += dx;
            y += sy;
        }
    }
}

/// A short tick label: up to 4 significant digits, no exponent for ordinary ranges.
fn fmt(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let a = v.abs();
    if !(1e-3..1e5).contains(&a) {
        return format!("{v:.1e}").replace('+', "");
    }
    let decimals = (3 - a.log10().floor() as i32).clamp(0, 4) as usize;
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// A "nice" tick step for a range.
fn nice_step(span: f64, ticks: usize) -> f64 {
    let raw = span / ticks.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    mag * if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    }
}

struct Panel<'a> {
    title: &'a str,
    x0: i64,
    y0: i64,
    w: i64,
    h: i64,
    series: [Vec<f64>; 2],
    fixed: Option<(f64, f64)>,
}

fn panel(img: &mut RgbImage, p: &Panel, epochs: &[usize], phase_starts: &[(usize, String)]) {
    let (left, right, top, bottom) = (p.x0 + 58, p.x0 + p.w - 12, p.y0 + 26, p.y0 + p.h - 34);
    let finite: Vec<f64> = p.series.iter().flatten().copied().filter(|v| v.is_finite()).collect();
    let (mut lo, mut hi) = p.fixed.unwrap_or_else(|| (finite.iter().copied().fold(f64::INFINITY, f64::min), finite.iter().copied().fold(f64::NEG_INFINITY, f64::max)));
    if !lo.is_finite() || !hi.is_finite() {
        (lo, hi) = (0.0, 1.0);
    }
    if p.fixed.is_none() {
        lo = lo.min(0.0);
        if hi - lo < 1e-9 {
            hi = lo + 1.0;
        }
        let step = nice_step(hi - lo, 5);
        hi = (hi / step).ceil() * step;
    }
    let (n_first, n_last) = (*epochs.first().unwrap_or(&1) as f64, *epochs.last().unwrap_or(&1) as f64);
    let xspan = (n_last - n_first).max(1.0);
    let px = |e: f64| left + ((e - n_first) / xspan * (right - left) as f64).round() as i64;
    let py = |v: f64| bottom - ((v - lo) / (hi - lo) * (bottom - top) as f64).round() as i64;
    // Grid and y ticks.
    let step = nice_step(hi - lo, 5);
    let mut v = (lo / step).ceil() * step;
    while v <= hi + step * 1e-6 {
        let y = py(v);
        fill_rect(img, left, y, right + 1, y + 1, GRID);
        let label = fmt(v);
        let (tw, th) = text_size(&label, 1);
        draw_text(img, left - 6 - tw as i64, y - th as i64 / 2, &label, 1, INK);
        v += step;
    }
    // x ticks (epochs).
    let xstep = nice_step(xspan, 8).max(1.0);
    let mut e = (n_first / xstep).ceil() * xstep;
    while e <= n_last + 1e-9 {
        let x = px(e);
        fill_rect(img, x, bottom + 1, x + 1, bottom + 5, INK);
        let label = fmt(e);
        let (tw, _) = text_size(&label, 1);
        draw_text(img, x - tw as i64 / 2, bottom + 8, &label, 1, INK);
        e += xstep;
    }
    let (tw, _) = text_size("epoch", 1);
    draw_text(img, (left + right) / 2 - tw as i64 / 2, bottom + 20, "epoch", 1, INK);
    // Phase boundaries.
    for (start, name) in phase_starts {
        let x = px(*start as f64 - 0.5);
        let mut y = top;
        while y < bottom {
            fill_rect(img, x, y, x + 1, (y + 4).min(bottom), PHASE);
            y += 8;
        }
        draw_text(img, x + 4, top + 4, name, 1, PHASE);
    }
    draw_rect(img, left, top, right, bottom, 1, INK);
    let (tw, _) = text_size(p.title, 2);
    draw_text(img, (left + right) / 2 - tw as i64 / 2, p.y0 + 6, p.title, 2, INK);
    // Series.
    for (s, color) in p.series.iter().zip([TRAIN, VAL]) {
        let pts: Vec<Option<(i64, i64)>> = s.iter().zip(epochs).map(|(v, e)| v.is_finite().then(|| (px(*e as f64), py(v.clamp(lo, hi))))).collect();
        for w in pts.windows(2) {
            if let [Some(a), Some(b)] = w {
                line(img, *a, *b, color);
            }
        }
        for q in pts.iter().flatten() {
            fill_rect(img, q.0 - 2, q.1 - 2, q.0 + 3, q.1 + 3, color);
        }
    }
    // Legend.
    let (lx, ly) = (right - 70, bottom - 30);
    for (k, (name, color)) in [("train", TRAIN), ("val", VAL)].iter().enumerate() {
        let y = ly + k as i64 * 12;
        fill_rect(img, lx, y + 2, lx + 14, y + 5, *color);
        draw_text(img, lx + 20, y, name, 1, INK);
    }
}

fn encode_png(img: &RgbImage, path: &Path) -> Result<()> {
    let mut bytes = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)?;
    write_atomic(path, &bytes)
}

/// Draws loss (left) and accuracy (right) per epoch, training against validation, with a
/// dashed line where a phase (e.g. fine-tuning) starts; writes a PNG atomically.
pub fn curves_png(epochs: &[Epoch], path: &Path) -> Result<()> {
    let mut img = RgbImage::from_pixel(960, 400, WHITE);
    let xs: Vec<usize> = epochs.iter().map(|e| e.epoch).collect();
    let mut starts = Vec::new();
    for w in epochs.windows(2) {
        if w[0].phase != w[1].phase {
            starts.push((w[1].epoch, w[1].phase.clone()));
        }
    }
    let loss = Panel { title: "loss", x0: 0, y0: 0, w: 480, h: 400, series: [epochs.iter().map(|e| e.loss).collect(), epochs.iter().map(|e| e.val_loss).collect()], fixed: None };
    let acc = Panel {
        title: "accuracy",
        x0: 480,
        y0: 0,
        w: 480,
        h: 400,
        series: [epochs.iter().map(|e| e.accuracy).collect(), epochs.iter().map(|e| e.val_accuracy).collect()],
        fixed: Some((0.0, 1.0)),
    };
    panel(&mut img, &loss, &xs, &starts);
    panel(&mut img, &acc, &xs, &starts);
    encode_png(&img, path)
}

/// Draws a confusion matrix (rows: true class, columns: predicted), each cell shaded by its
/// share of the row and labelled with its count; writes a PNG atomically.
pub fn confusion_png(confusion: &[Vec<usize>], classes: &[String], path: &Path) -> Result<()> {
    let n = confusion.len().max(1);
    let cell = (640 / n as i64).clamp(8, 72);
    let name_chars = 12usize;
    let short = |s: &str| -> String { s.chars().take(name_chars).collect() };
    let label_w = (name_chars as i64) * 6 + 16;
    let (left, top) = (label_w + 20, 64);
    let w = left + cell * n as i64 + 20;
    let h = top + cell * n as i64 + 20;
    let mut img = RgbImage::from_pixel(w.max(260) as u32, h as u32, WHITE);
    draw_text(&mut img, 10, 8, "confusion matrix", 2, INK);
    draw_text(&mut img, 10, 30, "rows: true   columns: predicted", 1, INK);
    let text_fits = cell >= 20;
    for (r, row) in confusion.iter().enumerate() {
        let total: usize = row.iter().sum();
        for (c, &v) in row.iter().enumerate() {
            let share = if total > 0 { v as f64 / total as f64 } else { 0.0 };
            let shade = |hi: u8| (255.0 - (255.0 - hi as f64) * share).round() as u8;
            let color = Rgb([shade(8), shade(69), shade(148)]);
            let (x, y) = (left + c as i64 * cell, top + r as i64 * cell);
            fill_rect(&mut img, x, y, x + cell, y + cell, color);
            draw_rect(&mut img, x, y, x + cell - 1, y + cell - 1, 1, GRID);
            if text_fits {
                let label = v.to_string();
                let scale = if cell >= 48 { 2 } else { 1 };
                let (tw, th) = text_size(&label, scale);
                let ink = if share > 0.5 { WHITE } else { INK };
                draw_text(&mut img, x + (cell - tw as i64) / 2, y + (cell - th as i64) / 2, &label, scale, ink);
            }
        }
    }
    if text_fits || n <= 40 {
        for (k, name) in classes.iter().enumerate().take(n) {
            let s = short(name);
            let (tw, th) = text_size(&s, 1);
            draw_text(&mut img, left - 8 - tw as i64, top + k as i64 * cell + (cell - th as i64) / 2, &s, 1, INK);
            // Column names stacked over the columns when they fit, else their indices.
            let col = if tw as i64 <= cell - 2 { s } else { k.to_string() };
            let (tw, _) = text_size(&col, 1);
            draw_text(&mut img, left + k as i64 * cell + (cell - tw as i64) / 2, top - 14, &col, 1, INK);
        }
    }
    encode_png(&img, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plots_decode() {
        let dir = std::env::temp_dir().join(format!("tlc-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let epochs: Vec<Epoch> = (1..=7)
            .map(|e| Epoch {
                epoch: e,
                phase: if e <= 4 { "frozen".into() } else { "fine-tune".into() },
                loss: 1.0 / e as f64,
                accuracy: 0.5 + 0.06 * e as f64,
                val_loss: if e == 3 { f64::INFINITY } else { 1.2 / e as f64 },
                val_accuracy: 0.5 + 0.05 * e as f64,
                lr: 1e-3,
                seconds: 1.0,
            })
            .collect();
        curves_png(&epochs, &dir.join("curves.png")).unwrap();
        let img = image::open(dir.join("curves.png")).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (960, 400));
        // Both series drew pixels of their colour.
        assert!(img.pixels().any(|p| *p == TRAIN) && img.pixels().any(|p| *p == VAL));
        confusion_png(&[vec![60, 10], vec![4, 79]], &["ants".into(), "bees".into()], &dir.join("confusion.png")).unwrap();
        let img = image::open(dir.join("confusion.png")).unwrap().to_rgb8();
        assert!(img.width() > 100 && img.height() > 100);
        // Many classes still draw.
        let big: Vec<Vec<usize>> = (0..100).map(|r| (0..100).map(|c| usize::from(r == c)).collect()).collect();
        let names: Vec<String> = (0..100).map(|k| format!("class {k}")).collect();
        confusion_png(&big, &names, &dir.join("big.png")).unwrap();
        curves_png(&epochs[..1], &dir.join("one.png")).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
