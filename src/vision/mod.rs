//! Bytes → RGB image → the model's letterboxed input tensor.
//!
//! Decoding checks the declared size in the image header against the configured limits before
//! any pixel buffer is allocated, so a decompression bomb costs a header read. Letterboxing
//! mirrors the reference pipeline: scale to fit, bilinear (triangle-filter) resize, pad 114,
//! RGB planes scaled to 0..1, written into a caller-owned buffer that is reused across frames.

use std::io::Cursor;

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::{ImageFormat, ImageReader, RgbImage};
use serde::{Deserialize, Serialize};

use crate::config::Invalid;
use crate::contract::ErrorCode;

mod jpeg;

/// Grey used for the letterbox padding, as in the training pipeline.
pub const PAD_VALUE: u8 = 114;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImageLimits {
    /// Largest encoded image accepted (bytes).
    pub max_bytes: usize,
    /// Largest decoded image accepted (width × height).
    pub max_pixels: u64,
    /// Largest width or height accepted (pixels).
    pub max_side: u32,
    /// Decoded pixels in memory at once, across all frames and requests of the process (a
    /// decode waits for room): about 3–7 bytes each, so the default bounds decoding to
    /// roughly 120–280 MB however many large images arrive together. At least `max_pixels`.
    pub max_decoded_pixels_in_flight: u64,
}

impl Default for ImageLimits {
    fn default() -> Self {
        // 8 MiB is the largest NATS payload worth configuring; 8K UHD is 33 Mpx.
        Self {
            max_bytes: 8 << 20,
            max_pixels: 40_000_000,
            max_side: 16_384,
            max_decoded_pixels_in_flight: 40_000_000,
        }
    }
}

impl ImageLimits {
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.max_bytes == 0 {
            return Err(Invalid::new("max_bytes", "must be greater than 0"));
        }
        if self.max_pixels == 0 {
            return Err(Invalid::new("max_pixels", "must be greater than 0"));
        }
        if self.max_side == 0 {
            return Err(Invalid::new("max_side", "must be greater than 0"));
        }
        if self.max_pixels > u64::from(u32::MAX) {
            return Err(Invalid::new(
                "max_pixels",
                format!("must be at most {}", u32::MAX),
            ));
        }
        if self.max_decoded_pixels_in_flight < self.max_pixels {
            return Err(Invalid::new(
                "max_decoded_pixels_in_flight",
                "must be at least max_pixels, or the largest accepted image could never decode",
            ));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VisionError {
    #[error("image is {size} bytes, over the limit of {limit} bytes")]
    TooManyBytes { size: usize, limit: usize },
    #[error("image is {width}×{height} pixels, over the limit ({max_pixels} pixels, {max_side} per side)")]
    TooManyPixels {
        width: u32,
        height: u32,
        max_pixels: u64,
        max_side: u32,
    },
    #[error("image is empty")]
    Empty,
    #[error("image header declares {width}×{height} pixels: an image needs at least one")]
    NoPixels { width: u32, height: u32 },
    #[error("unrecognised image format (accepted: JPEG, PNG, WebP, BMP, GIF, TIFF)")]
    UnknownFormat,
    #[error("image header is unreadable: {0}")]
    Header(#[source] image::ImageError),
    #[error("image data is corrupt or truncated: {0}")]
    Decode(#[source] image::ImageError),
    #[error("JPEG is truncated: {0}")]
    Truncated(&'static str),
    #[error("JPEG data is corrupt or cut short: {0}")]
    Jpeg(#[source] zune_jpeg::errors::DecodeErrors),
    #[error(
        "JPEG decoded to {got} bytes, not the {width}×{height} RGB pixels its header declares"
    )]
    JpegSize { width: u32, height: u32, got: usize },
    #[error("letterbox resize failed: {0}")]
    Resize(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl VisionError {
    pub fn code(&self) -> ErrorCode {
        match self {
            VisionError::TooManyBytes { .. } | VisionError::TooManyPixels { .. } => {
                ErrorCode::TooLarge
            }
            VisionError::Resize(_) => ErrorCode::Internal,
            _ => ErrorCode::BadImage,
        }
    }
}

/// What an image's header says, read before any pixel buffer exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub format: ImageFormat,
    pub width: u32,
    pub height: u32,
}

impl Probe {
    pub fn pixels(&self) -> u64 {
        u64::from(self.width) * u64::from(self.height)
    }
}

/// Reads format and size from the header and checks them against `limits`: cheap, so a
/// decompression bomb costs a header read and a caller can reserve memory before decoding.
pub fn probe(bytes: &[u8], limits: &ImageLimits) -> Result<Probe, VisionError> {
    if bytes.is_empty() {
        return Err(VisionError::Empty);
    }
    if bytes.len() > limits.max_bytes {
        return Err(VisionError::TooManyBytes {
            size: bytes.len(),
            limit: limits.max_bytes,
        });
    }
    let format = image::guess_format(bytes).map_err(|_| VisionError::UnknownFormat)?;
    if !matches!(
        format,
        ImageFormat::Jpeg
            | ImageFormat::Png
            | ImageFormat::WebP
            | ImageFormat::Bmp
            | ImageFormat::Gif
            | ImageFormat::Tiff
    ) {
        return Err(VisionError::UnknownFormat);
    }
    if format == ImageFormat::Jpeg {
        jpeg::check_structure(bytes)?;
    }
    let (width, height) = ImageReader::with_format(Cursor::new(bytes), format)
        .into_dimensions()
        .map_err(VisionError::Header)?;
    let probe = Probe {
        format,
        width,
        height,
    };
    if probe.pixels() == 0 {
        return Err(VisionError::NoPixels { width, height });
    }
    if probe.pixels() > limits.max_pixels || width > limits.max_side || height > limits.max_side {
        return Err(VisionError::TooManyPixels {
            width,
            height,
            max_pixels: limits.max_pixels,
            max_side: limits.max_side,
        });
    }
    Ok(probe)
}

/// Decodes JPEG, PNG, WebP, BMP, GIF (first frame) or TIFF bytes into RGB, within `limits`.
/// EXIF orientation is not applied: boxes are in the pixel grid as stored.
pub fn decode(bytes: &[u8], limits: &ImageLimits) -> Result<RgbImage, VisionError> {
    let probe = probe(bytes, limits)?;
    decode_probed(bytes, &probe, limits)
}

/// Decodes an image whose header [`probe`] accepted.
pub fn decode_probed(
    bytes: &[u8],
    probe: &Probe,
    limits: &ImageLimits,
) -> Result<RgbImage, VisionError> {
    if probe.format == ImageFormat::Jpeg {
        return jpeg::decode(bytes, probe, limits);
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), probe.format);
    // A second line of defence: the decoder itself refuses to allocate past the limits, in
    // case a format's header under-reports what its body expands to.
    reader.limits(decoder_limits(limits));
    Ok(reader.decode().map_err(VisionError::Decode)?.into_rgb8())
}

fn decoder_limits(limits: &ImageLimits) -> image::Limits {
    let mut decoder_limits = image::Limits::default();
    decoder_limits.max_image_width = Some(limits.max_side);
    decoder_limits.max_image_height = Some(limits.max_side);
    decoder_limits.max_alloc = Some(limits.max_pixels.saturating_mul(4 * 2));
    decoder_limits
}

/// How a source image sits inside the model input: scale, then offset by the padding.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Letterbox {
    pub src_width: u32,
    pub src_height: u32,
    pub scale: f64,
    pub scaled_width: u32,
    pub scaled_height: u32,
    pub pad_left: u32,
    pub pad_top: u32,
}

impl Letterbox {
    /// The placement of a `src_width`×`src_height` image in an `input_width`×`input_height`
    /// input, rounded as the reference pipeline rounds (half to even).
    pub fn fit(src_width: u32, src_height: u32, input_width: u32, input_height: u32) -> Letterbox {
        let scale = (f64::from(input_width) / f64::from(src_width))
            .min(f64::from(input_height) / f64::from(src_height));
        let scaled = |side: u32, limit: u32| {
            ((f64::from(side) * scale).round_ties_even() as u32).clamp(1, limit)
        };
        let scaled_width = scaled(src_width, input_width);
        let scaled_height = scaled(src_height, input_height);
        Letterbox {
            src_width,
            src_height,
            scale,
            scaled_width,
            scaled_height,
            pad_left: (input_width - scaled_width) / 2,
            pad_top: (input_height - scaled_height) / 2,
        }
    }

    /// A point in model-input pixels → source pixels, clipped to the source image.
    pub fn to_source(&self, x: f32, y: f32) -> (f32, f32) {
        let scale = self.scale as f32;
        let sx = (x - self.pad_left as f32) / scale;
        let sy = (y - self.pad_top as f32) / scale;
        (
            sx.clamp(0.0, self.src_width as f32),
            sy.clamp(0.0, self.src_height as f32),
        )
    }
}

/// Reusable letterboxing state: the resizer and its scratch image.
pub struct Letterboxer {
    resizer: Resizer,
    scratch: Vec<u8>,
    to_unit: [f32; 256],
}

impl Default for Letterboxer {
    fn default() -> Self {
        let mut to_unit = [0.0; 256];
        for (v, slot) in to_unit.iter_mut().enumerate() {
            *slot = v as f32 / 255.0;
        }
        Self {
            resizer: Resizer::new(),
            scratch: Vec::new(),
            to_unit,
        }
    }
}

impl Letterboxer {
    /// Writes `image` letterboxed into `tensor` as planar RGB float32 [3, height, width],
    /// values in 0..1; `tensor` is resized as needed and otherwise reused.
    pub fn run(
        &mut self,
        image: &RgbImage,
        input_width: u32,
        input_height: u32,
        tensor: &mut Vec<f32>,
    ) -> Result<Letterbox, VisionError> {
        let lb = self.scale(image, input_width, input_height)?;
        self.fill(image, &lb, input_width, input_height, tensor);
        Ok(lb)
    }

    /// The first half of [`Letterboxer::run`]: where `image` sits in the input, and the image
    /// scaled to that size (see [`Letterboxer::scaled`]). A caller that may not need the
    /// tensor (a gated frame whose model run is skipped) looks at the scaled copy first.
    pub fn scale(
        &mut self,
        image: &RgbImage,
        input_width: u32,
        input_height: u32,
    ) -> Result<Letterbox, VisionError> {
        let lb = Letterbox::fit(image.width(), image.height(), input_width, input_height);
        if (lb.scaled_width, lb.scaled_height) != image.dimensions() {
            self.resize(image, &lb)?;
        }
        Ok(lb)
    }

    /// The second half: the tensor from the scaled copy the last [`Letterboxer::scale`] of
    /// `image` made, the padding written only where it shows (a 4:3 frame in a 4:3 input has
    /// none).
    pub fn fill(
        &self,
        image: &RgbImage,
        lb: &Letterbox,
        input_width: u32,
        input_height: u32,
        tensor: &mut Vec<f32>,
    ) {
        let (width, plane) = (
            input_width as usize,
            input_width as usize * input_height as usize,
        );
        // Every element is written below; resize only allocates (or keeps) the room.
        tensor.resize(plane * 3, 0.0);
        let pad = self.to_unit[usize::from(PAD_VALUE)];
        let (scaled, _, _) = self.scaled(image, lb);
        let (row_len, top) = (lb.scaled_width as usize, lb.pad_top as usize);
        let (left, rows) = (lb.pad_left as usize, lb.scaled_height as usize);
        for channel in tensor.chunks_exact_mut(plane) {
            channel[..top * width].fill(pad);
            channel[(top + rows) * width..].fill(pad);
            for line in channel[top * width..(top + rows) * width].chunks_exact_mut(width) {
                line[..left].fill(pad);
                line[left + row_len..].fill(pad);
            }
        }
        let (r, rest) = tensor.split_at_mut(plane);
        let (g, b) = rest.split_at_mut(plane);
        for (row, pixels) in scaled.chunks_exact(row_len * 3).take(rows).enumerate() {
            let start = (top + row) * width + left;
            let (r, g, b) = (
                &mut r[start..start + row_len],
                &mut g[start..start + row_len],
                &mut b[start..start + row_len],
            );
            // A table, not a division: this loop does not vectorise without AVX2, and the
            // table gives the same values as v / 255.0.
            for (i, px) in pixels.chunks_exact(3).enumerate() {
                r[i] = self.to_unit[usize::from(px[0])];
                g[i] = self.to_unit[usize::from(px[1])];
                b[i] = self.to_unit[usize::from(px[2])];
            }
        }
    }

    /// The frame as scaled into the input by the last [`Letterboxer::scale`] of `image` with
    /// letterbox `lb`: packed RGB rows, width, height. Cheaper to look at than the frame.
    pub fn scaled<'a>(&'a self, image: &'a RgbImage, lb: &Letterbox) -> (&'a [u8], u32, u32) {
        if (lb.scaled_width, lb.scaled_height) == image.dimensions() {
            (image.as_raw(), image.width(), image.height())
        } else {
            (&self.scratch, lb.scaled_width, lb.scaled_height)
        }
    }

    fn resize(&mut self, image: &RgbImage, lb: &Letterbox) -> Result<(), VisionError> {
        let src = ImageRef::new(
            image.width(),
            image.height(),
            image.as_raw(),
            PixelType::U8x3,
        )
        .map_err(|e| VisionError::Resize(Box::new(e)))?;
        self.scratch
            .resize(lb.scaled_width as usize * lb.scaled_height as usize * 3, 0);
        let mut dst = Image::from_slice_u8(
            lb.scaled_width,
            lb.scaled_height,
            &mut self.scratch,
            PixelType::U8x3,
        )
        .map_err(|e| VisionError::Resize(Box::new(e)))?;
        let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
        self.resizer
            .resize(&src, &mut dst, &options)
            .map_err(|e| VisionError::Resize(Box::new(e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(img: &RgbImage, format: ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    fn gradient(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, 200])
        })
    }

    #[test]
    fn decodes_png_and_jpeg() {
        let img = gradient(64, 48);
        let png = decode(&encode(&img, ImageFormat::Png), &ImageLimits::default()).unwrap();
        assert_eq!(png, img);
        let jpeg = decode(&encode(&img, ImageFormat::Jpeg), &ImageLimits::default()).unwrap();
        assert_eq!(jpeg.dimensions(), (64, 48));
    }

    #[test]
    fn rejects_garbage_truncation_and_oversize() {
        let limits = ImageLimits::default();
        assert!(matches!(
            decode(b"hello world", &limits),
            Err(VisionError::UnknownFormat)
        ));
        assert!(matches!(decode(b"", &limits), Err(VisionError::Empty)));
        let jpeg = encode(&gradient(64, 48), ImageFormat::Jpeg);
        for cut in [jpeg.len() / 2, jpeg.len() - 2] {
            let err = decode(&jpeg[..cut], &limits).unwrap_err();
            assert_eq!(err.code(), ErrorCode::BadImage, "{err}");
        }
        // Bytes after the end-of-image marker (some cameras pad) are fine.
        let padded = [jpeg.as_slice(), &[0u8; 16]].concat();
        assert!(decode(&padded, &limits).is_ok());
        let small = ImageLimits {
            max_bytes: 100,
            ..limits.clone()
        };
        assert!(matches!(
            decode(&jpeg, &small),
            Err(VisionError::TooManyBytes { .. })
        ));
    }

    #[test]
    fn zero_sized_images_are_bad_images() {
        // Headers that declare no pixels: a 0×0 GIF screen and a 0-wide PNG (CRC fixed).
        let gif = b"GIF89a\x00\x00\x00\x00\x00\x00\x00\x3b".to_vec();
        let mut png = encode(&gradient(1, 1), ImageFormat::Png);
        png[16..20].copy_from_slice(&0u32.to_be_bytes());
        let crc = crc32fast::hash(&png[12..29]);
        png[29..33].copy_from_slice(&crc.to_be_bytes());
        for (name, bytes) in [("gif", gif), ("png", png)] {
            let err = decode(&bytes, &ImageLimits::default()).unwrap_err();
            assert_eq!(err.code(), ErrorCode::BadImage, "{name}: {err}");
        }
    }

    #[test]
    fn a_jpeg_cut_inside_its_scan_with_an_end_marker_appended_is_refused() {
        let jpeg = encode(&gradient(256, 192), ImageFormat::Jpeg);
        let scan = jpeg
            .windows(2)
            .rposition(|w| w == [0xFF, 0xDA])
            .expect("a scan");
        // Keep the scan header and a little of its data, then end the file "properly".
        let cut = [&jpeg[..scan + 40], &[0xFF, 0xD9][..]].concat();
        let err = decode(&cut, &ImageLimits::default()).unwrap_err();
        assert!(matches!(err, VisionError::Truncated(_)), "{err}");
        assert_eq!(err.code(), ErrorCode::BadImage);
    }

    #[test]
    fn grey_and_rgb_jpegs_decode_to_rgb_like_the_image_crate() {
        let rgb = encode(&gradient(64, 48), ImageFormat::Jpeg);
        let grey = {
            let mut out = Cursor::new(Vec::new());
            image::DynamicImage::ImageRgb8(gradient(64, 48))
                .into_luma8()
                .write_to(&mut out, ImageFormat::Jpeg)
                .unwrap();
            out.into_inner()
        };
        for bytes in [rgb, grey] {
            let ours = decode(&bytes, &ImageLimits::default()).unwrap();
            let theirs = image::load_from_memory(&bytes).unwrap().into_rgb8();
            assert_eq!(ours, theirs);
        }
    }

    #[test]
    fn decompression_bomb_is_refused_from_the_header() {
        // A PNG whose header claims 20000×20000 (400 Mpx) while its body is a few bytes: the
        // header alone must refuse it, before any pixel buffer exists.
        let mut png = encode(&gradient(1, 1), ImageFormat::Png);
        // IHDR data starts after the 8-byte signature, 4-byte length and 4-byte type.
        png[16..20].copy_from_slice(&20_000u32.to_be_bytes());
        png[20..24].copy_from_slice(&20_000u32.to_be_bytes());
        let crc = crc32fast::hash(&png[12..29]);
        png[29..33].copy_from_slice(&crc.to_be_bytes());
        let err = decode(&png, &ImageLimits::default()).unwrap_err();
        assert!(
            matches!(err, VisionError::TooManyPixels { width: 20_000, .. }),
            "{err}"
        );
        assert_eq!(err.code(), ErrorCode::TooLarge);
    }

    #[test]
    fn letterbox_matches_the_reference_geometry() {
        // bus.jpg: 810×1080 → r = 0.5926, 480×640, pad_left 80 (reference meta).
        let lb = Letterbox::fit(810, 1080, 640, 640);
        assert_eq!(
            (lb.scaled_width, lb.scaled_height, lb.pad_left, lb.pad_top),
            (480, 640, 80, 0)
        );
        let lb = Letterbox::fit(768, 576, 640, 640);
        assert_eq!(
            (lb.scaled_width, lb.scaled_height, lb.pad_left, lb.pad_top),
            (640, 480, 0, 80)
        );
        let (x, y) = lb.to_source(320.0, 80.0);
        assert!((x - 384.0).abs() < 1e-3 && y.abs() < 1e-3);
        assert_eq!(lb.to_source(-50.0, 700.0), (0.0, 576.0));
    }

    #[test]
    fn letterbox_pads_with_114_and_scales_to_unit() {
        let img = RgbImage::from_pixel(100, 50, image::Rgb([255, 0, 51]));
        let mut tensor = Vec::new();
        let lb = Letterboxer::default()
            .run(&img, 64, 64, &mut tensor)
            .unwrap();
        assert_eq!(
            (lb.scaled_width, lb.scaled_height, lb.pad_top),
            (64, 32, 16)
        );
        assert_eq!(tensor.len(), 3 * 64 * 64);
        let pad = 114.0 / 255.0;
        assert_eq!(tensor[0], pad);
        let centre = 32 * 64 + 32;
        assert_eq!(
            (tensor[centre], tensor[4096 + centre], tensor[8192 + centre]),
            (1.0, 0.0, 0.2)
        );
        assert_eq!(tensor[4096 + 63 * 64 + 63], pad);
    }

    #[test]
    fn a_reused_tensor_is_written_everywhere() {
        // Only the padding that shows is written, so every element of a reused tensor must be
        // either padding or picture: a tall image (pads left and right) after a wide one
        // (pads top and bottom), into a tensor full of NaN.
        let mut letterboxer = Letterboxer::default();
        let pad = 114.0 / 255.0;
        // Also the extremes, scaled to a single row or column.
        for (w, h) in [(100, 50), (50, 100), (64, 64), (1, 1), (1000, 1), (1, 1000)] {
            let img = RgbImage::from_pixel(w, h, image::Rgb([255, 255, 255]));
            let mut tensor = vec![f32::NAN; 3 * 64 * 64 + 5];
            let lb = letterboxer.run(&img, 64, 64, &mut tensor).unwrap();
            assert_eq!(tensor.len(), 3 * 64 * 64);
            for (i, v) in tensor.iter().enumerate() {
                let (x, y) = ((i % 4096) % 64, (i % 4096) / 64);
                let inside = (lb.pad_left..lb.pad_left + lb.scaled_width).contains(&(x as u32))
                    && (lb.pad_top..lb.pad_top + lb.scaled_height).contains(&(y as u32));
                assert_eq!(*v, if inside { 1.0 } else { pad }, "{w}×{h}: ({x}, {y})");
            }
        }
    }

    #[test]
    fn same_size_input_is_copied_exactly() {
        let img = gradient(32, 32);
        let mut tensor = vec![9.0; 7];
        Letterboxer::default()
            .run(&img, 32, 32, &mut tensor)
            .unwrap();
        assert_eq!(tensor[5 * 32 + 7], 7.0 / 255.0);
        assert_eq!(tensor[1024 + 5 * 32 + 7], 5.0 / 255.0);
    }
}
