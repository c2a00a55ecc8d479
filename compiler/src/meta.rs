//! Model metadata carried from the spec header into the IR: what the runtime needs to
//! feed real images to the network and to name its outputs.

use serde::Serialize;

/// How an image becomes the network's input tensor, following the reference exactly.
///
/// The value of each channel is `(pixel * scale - mean) / std`, with `pixel` in 0..=255.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Preprocess {
    /// How the decoded image is resized before cropping.
    pub resize: Resize,
    /// Interpolation filter of the resize.
    pub interpolation: Interpolation,
    /// Whether the resize antialiases when shrinking (PIL and torchvision do; OpenCV and darknet do not).
    pub antialias: bool,
    /// Center crop `(height, width)` after the resize, if any.
    pub crop: Option<(usize, usize)>,
    /// Multiplier applied to the 0..=255 pixel value first (e.g. 1/255).
    pub scale: f32,
    /// Per-channel mean subtracted after scaling, in the network's channel order.
    pub mean: [f32; 3],
    /// Per-channel divisor applied last, in the network's channel order.
    pub std: [f32; 3],
    /// Channel order the network expects.
    pub channels: ChannelOrder,
}

/// Resize policy of [`Preprocess`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum Resize {
    /// No resize: the image must already have the input size.
    None,
    /// Scale so the shorter side equals this many pixels, keeping the aspect ratio
    /// (torchvision `Resize(int)`).
    ShorterSide(usize),
    /// Stretch the whole image to exactly `(height, width)` (darknet, OpenCV `resize`).
    Exact(usize, usize),
    /// Scale to fit inside `(height, width)` keeping the aspect ratio, then pad with gray 114
    /// centred (Ultralytics letterbox).
    Letterbox(usize, usize),
}

/// Interpolation filter of a resize.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Interpolation {
    /// Nearest neighbour.
    Nearest,
    /// Bilinear (triangle filter).
    Bilinear,
    /// Bicubic (a = -0.5, as PIL).
    Bicubic,
}

/// Channel order of the input tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum ChannelOrder {
    /// Red, green, blue.
    Rgb,
    /// Blue, green, red.
    Bgr,
}

impl Default for Preprocess {
    fn default() -> Self {
        Preprocess {
            resize: Resize::None,
            interpolation: Interpolation::Bilinear,
            antialias: true,
            crop: None,
            scale: 1.0 / 255.0,
            mean: [0.0; 3],
            std: [1.0; 3],
            channels: ChannelOrder::Rgb,
        }
    }
}
