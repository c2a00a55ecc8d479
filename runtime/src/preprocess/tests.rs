use super::*;
use std::path::PathBuf;

fn shared(rel: &str) -> Option<PathBuf> {
    crate::shared_asset(rel)
}

fn golden_input(rel: &str) -> Option<Vec<f32>> {
    let w = crate::weights::Weights::load(&shared(rel)?).unwrap();
    Some(w.get("input").unwrap().flatten_all().unwrap().to_vec1().unwrap())
}

/// (max abs difference, number of elements that differ by more than 1e-6)
fn diff(a: &[f32], b: &[f32]) -> (f32, usize) {
    assert_eq!(a.len(), b.len());
    let mut m = 0f32;
    let mut n = 0;
    for (x, y) in a.iter().zip(b) {
        let d = (x - y).abs();
        m = m.max(d);
        if d > 1e-6 {
            n += 1;
        }
    }
    (m, n)
}

fn lite0() -> Preprocess {
    Preprocess {
        resize: Resize::ShorterSide(256),
        interpolation: Interpolation::Bicubic,
        antialias: true,
        crop: Some((224, 224)),
        scale: 1.0,
        mean: [127.0; 3],
        std: [128.0; 3],
        channels: ChannelOrder::Rgb,
    }
}

#[test]
fn preprocess_golden_efficientnet_lite0_chelsea() {
    let (Some(photo), Some(gold)) = (
        shared("assets/photos/chelsea.png"),
        golden_input("assets/weights/efficientnet-lite0.chelsea-golden.safetensors"),
    ) else {
        return;
    };
    let img = load_image(&photo).unwrap();
    assert_eq!((img.width(), img.height()), (451, 300));
    // The golden was made with `im.resize((round(w*s), round(h*s)), BICUBIC)` = 385x256 and a
    // `(w - 224) // 2` crop: reproduce that geometry to check the resampler itself.
    let src = Rgb8::new(451, 300, img.to_rgb8().into_raw());
    let r = resize::pil_resize(&src, 385, 256, PilFilter::Bicubic);
    let (c, _) = center_crop(&r, 224, 224);
    assert_eq!(((385 - 224) / 2, (256 - 224) / 2), (80, 16));
    let mut mine = vec![0f32; 3 * 224 * 224];
    for ch in 0..3 {
        for i in 0..224 * 224 {
            mine[ch * 224 * 224 + i] = (c.data[i * 3 + ch] as f32 - 127.0) / 128.0;
        }
    }
    let (m, n) = diff(&mine, &gold);
    println!("chelsea, golden geometry 385x256 + PIL bicubic: max abs diff {m}, {n} values differ");
    assert_eq!(n, 0, "PIL bicubic resampler should be bit-exact");

    // The torchvision pipeline (Resize(256) gives 384x256, not 385x256).
    let p = preprocess(&img, &lite0()).unwrap();
    assert_eq!((p.height, p.width, p.original), (224, 224, (300, 451)));
    let (m, n) = diff(&p.data, &gold);
    println!("chelsea, torchvision Resize(256)+CenterCrop(224): max abs diff {m} ({} levels), {n} of {} values differ", m * 128.0, gold.len());
    assert!(m < 0.5, "{m}");
}

#[test]
fn preprocess_golden_yolo_fastest_dog() {
    let (Some(photo), Some(gold)) = (
        shared("assets/photos/dog.jpg"),
        golden_input("assets/weights/yolo-fastest-1.1.dog-golden.safetensors"),
    ) else {
        return;
    };
    let img = load_image(&photo).unwrap();
    let p = Preprocess {
        resize: Resize::Exact(320, 320),
        interpolation: Interpolation::Bilinear,
        antialias: false,
        crop: None,
        scale: 1.0 / 255.0,
        mean: [0.0; 3],
        std: [1.0; 3],
        channels: ChannelOrder::Rgb,
    };
    let out = preprocess(&img, &p).unwrap();
    assert_eq!((out.height, out.width, out.original), (320, 320, (576, 768)));
    assert_eq!(out.scale, (320.0 / 576.0, 320.0 / 768.0));
    let (m, n) = diff(&out.data, &gold);
    let hist: Vec<usize> = (0..4)
        .map(|k| out.data.iter().zip(&gold).filter(|(a, b)| ((*a - *b).abs() * 255.0).round() as usize == k).count())
        .collect();
    println!("dog, Exact(320,320) OpenCV linear: max abs diff {m} ({} levels), {n} of {} values differ; by levels 0/1/2/3: {hist:?}", m * 255.0, gold.len());
    // libjpeg-turbo's decoding and OpenCV's fixed-point resize: bit-exact.
    assert_eq!((m, n), (0.0, 0), "the OpenCV blob must be reproduced exactly");
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tlc-pre-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn preprocess_load_image_variants() {
    let d = temp_dir("variants");
    let (w, h) = (5u32, 4u32);
    // gray 8-bit
    let g = image::GrayImage::from_fn(w, h, |x, y| image::Luma([(x * 40 + y) as u8]));
    g.save(d.join("gray.png")).unwrap();
    // RGBA with transparent pixels: alpha is dropped, not composited.
    let a = image::RgbaImage::from_fn(w, h, |x, y| image::Rgba([x as u8 * 50, y as u8 * 60, 7, (x * 60) as u8]));
    a.save(d.join("alpha.png")).unwrap();
    // 16-bit RGB and gray+alpha 16-bit
    let r16 = image::ImageBuffer::<image::Rgb<u16>, _>::from_fn(w, h, |x, y| image::Rgb([x as u16 * 13000, y as u16 * 20000 + 255, 65535]));
    DynamicImage::ImageRgb16(r16).save(d.join("rgb16.png")).unwrap();
    let la16 = image::ImageBuffer::<image::LumaA<u16>, _>::from_fn(w, h, |x, _| image::LumaA([x as u16 * 16000, 0]));
    DynamicImage::ImageLumaA16(la16).save(d.join("la16.png")).unwrap();
    // A PNG with a .jpg extension: detected by content.
    std::fs::copy(d.join("alpha.png"), d.join("really-png.jpg")).unwrap();
    // BMP, GIF and WebP-free formats round-trip too.
    a.save(d.join("alpha.bmp")).unwrap();

    let px = |name: &str, x: u32, y: u32| -> [u8; 3] {
        let img = load_image(&d.join(name)).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert_eq!((img.width(), img.height()), (w, h), "{name}");
        assert!(matches!(img, DynamicImage::ImageRgb8(_)));
        img.to_rgb8().get_pixel(x, y).0
    };
    assert_eq!(px("gray.png", 3, 2), [122; 3]);
    assert_eq!(px("alpha.png", 0, 3), [0, 180, 7]); // alpha 0 there: colour kept
    assert_eq!(px("alpha.png", 4, 1), [200, 60, 7]);
    assert_eq!(px("really-png.jpg", 4, 1), [200, 60, 7]);
    assert_eq!(px("alpha.bmp", 4, 1), [200, 60, 7]);
    assert_eq!(px("rgb16.png", 2, 3), [(26000u16 >> 8) as u8, (60255u16 >> 8) as u8, 255]);
    assert_eq!(px("la16.png", 3, 0), [(48000u16 >> 8) as u8; 3]);

    // Preprocessing accepts any decoded variant the same way.
    let p = Preprocess { resize: Resize::None, crop: None, ..Preprocess::default() };
    let direct = preprocess(&image::open(d.join("rgb16.png")).unwrap(), &p).unwrap();
    let loaded = preprocess(&load_image(&d.join("rgb16.png")).unwrap(), &p).unwrap();
    assert_eq!(direct, loaded);

    // Unreadable files: the error names the file.
    std::fs::write(d.join("text.png"), "not an image at all").unwrap();
    std::fs::write(d.join("empty.jpg"), "").unwrap();
    let png = std::fs::read(d.join("alpha.png")).unwrap();
    std::fs::write(d.join("truncated.png"), &png[..png.len() / 2]).unwrap();
    for name in ["text.png", "empty.jpg", "truncated.png", "missing.png"] {
        let e = load_image(&d.join(name)).expect_err(name);
        let msg = format!("{e:#}");
        assert!(msg.contains(name), "{msg}");
    }
    std::fs::remove_dir_all(&d).unwrap();
}

fn ramp(w: usize, h: usize) -> DynamicImage {
    DynamicImage::ImageRgb8(image::RgbImage::from_fn(w as u32, h as u32, |x, y| {
        image::Rgb([(x * 7 % 256) as u8, (y * 5 % 256) as u8, ((x + y) % 256) as u8])
    }))
}

#[test]
fn preprocess_geometry() {
    assert_eq!(shorter_side_size(300, 451, 256), (256, 384));
    assert_eq!(shorter_side_size(451, 300, 256), (384, 256));
    assert_eq!(shorter_side_size(100, 100, 32), (32, 32));
    // torchvision center crop rounding: int(round((h - ch) / 2)), half to even.
    let img = Rgb8::new(7, 5, (0..105).map(|v| v as u8).collect());
    let (_, off) = center_crop(&img, 2, 2);
    assert_eq!(off, (py_round(1.5), py_round(2.5))); // (2, 2)
    assert_eq!(off, (2, 2));
    // crop larger than the image pads with zeros (torchvision).
    let (c, off) = center_crop(&img, 7, 9);
    assert_eq!(off, (-1, -1));
    assert_eq!(&c.data[..3], &[0, 0, 0]);
    assert_eq!(&c.data[(9 + 1) * 3..(9 + 1) * 3 + 3], &img.data[..3]);

    // Letterbox 640x480 into 320x320: gain 0.5, 320x240 image, 40 rows of 114 above and below.
    let p = Preprocess {
        resize: Resize::Letterbox(320, 320),
        antialias: false,
        scale: 1.0,
        ..Preprocess::default()
    };
    let out = preprocess(&ramp(640, 480), &p).unwrap();
    assert_eq!((out.height, out.width), (320, 320));
    assert_eq!(out.scale, (0.5, 0.5));
    assert_eq!(out.pad, (40.0, 0.0));
    assert_eq!(out.data[0], 114.0);
    assert_eq!(out.data[39 * 320], 114.0);
    assert_ne!(out.data[40 * 320 + 5], 114.0);
    assert_eq!(out.data[280 * 320], 114.0);
    // Odd padding: 100x61 -> 64x64: new 64x39, 25 rows -> top 12, bottom 13.
    let out = preprocess(&ramp(100, 61), &Preprocess { resize: Resize::Letterbox(64, 64), ..p.clone() }).unwrap();
    assert_eq!(out.pad, (12.0, 0.0));
    assert_eq!(out.data[11 * 64], 114.0);
    assert_ne!(out.data[12 * 64 + 10], 114.0, "row 12 is the first image row");
    assert_ne!(out.data[50 * 64 + 10], 114.0, "row 50 is the last image row");
    assert_eq!(out.data[51 * 64 + 10], 114.0);

    // Center crop reports minus its offset in `pad`, BGR swaps, mean/std apply per channel.
    let p = Preprocess {
        resize: Resize::None,
        crop: Some((2, 3)),
        scale: 1.0,
        mean: [1.0, 2.0, 3.0],
        std: [2.0, 4.0, 8.0],
        channels: ChannelOrder::Bgr,
        ..Preprocess::default()
    };
    let img = ramp(9, 6);
    let out = preprocess(&img, &p).unwrap();
    assert_eq!(out.pad, (-2.0, -3.0));
    let px = img.to_rgb8().get_pixel(3, 2).0;
    assert_eq!(out.data[0], (px[2] as f32 - 1.0) / 2.0);
    assert_eq!(out.data[6], (px[1] as f32 - 2.0) / 4.0);
    assert_eq!(out.data[12], (px[0] as f32 - 3.0) / 8.0);
}

#[test]
fn preprocess_resamplers_basic_properties() {
    // Constant images stay constant under every filter.
    let flat = DynamicImage::ImageRgb8(image::RgbImage::from_pixel(37, 23, image::Rgb([200, 10, 99])));
    for interp in [Interpolation::Nearest, Interpolation::Bilinear, Interpolation::Bicubic] {
        for antialias in [true, false] {
            for resize in [Resize::Exact(11, 16), Resize::Exact(50, 81), Resize::ShorterSide(9), Resize::Exact(23, 37)] {
                let p = Preprocess { resize: resize.clone(), interpolation: interp, antialias, scale: 1.0, ..Preprocess::default() };
                let out = preprocess(&flat, &p).unwrap();
                let n = out.height * out.width;
                assert!(out.data[..n].iter().all(|&v| v == 200.0), "{interp:?} {antialias} {resize:?}");
                assert!(out.data[2 * n..].iter().all(|&v| v == 99.0));
            }
        }
    }
    // OpenCV linear on an exact 2x upscale of [0, 100]: 0, 25, 75, 100.
    let src = Rgb8::new(2, 1, vec![0, 0, 0, 100, 100, 100]);
    let r = resize::cv_linear(&src, 4, 1);
    assert_eq!(r.data.iter().step_by(3).copied().collect::<Vec<_>>(), vec![0, 25, 75, 100]);
    // OpenCV nearest picks floor(x * in/out); PIL nearest the pixel under the centre.
    let src = Rgb8::new(4, 1, (0..12).map(|v| v as u8 * 10).collect());
    let r = resize::cv_nearest(&src, 3, 1);
    assert_eq!(r.data.iter().step_by(3).copied().collect::<Vec<_>>(), vec![0, 30, 60]);
    let r = resize::pil_nearest(&src, 3, 1);
    assert_eq!(r.data.iter().step_by(3).copied().collect::<Vec<_>>(), vec![0, 60, 90]);
    // Degenerate configurations are errors, not panics.
    let p = Preprocess { resize: Resize::Exact(0, 3), ..Preprocess::default() };
    assert!(preprocess(&flat, &p).is_err());
    let p = Preprocess { std: [1.0, 0.0, 1.0], ..Preprocess::default() };
    assert!(preprocess(&flat, &p).is_err());
}

