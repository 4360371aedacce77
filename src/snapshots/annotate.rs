//! The annotated snapshot: the frame with boxes, labels (confidence, track id), zone outlines
//! and a banner (level, score, camera, time, description), drawn with imageproc; text in a
//! font that covers Hangul as well as Latin, so Korean descriptions render.

use std::path::{Path, PathBuf};

use ab_glyph::{Font, FontVec, PxScale};
use image::{Rgb, RgbImage};
use imageproc::drawing::{
    draw_filled_rect_mut, draw_hollow_rect_mut, draw_line_segment_mut, draw_text_mut, text_size,
};
use imageproc::rect::Rect;

use crate::contract::{BBox, Level};

/// Where a font with Hangul is looked for when `archive.snapshots.font` is not set: Debian's
/// fonts-nanum (scripts/setup.sh installs it), then Noto CJK.
pub const FONT_SEARCH: [&str; 4] = [
    "/usr/share/fonts/truetype/nanum/NanumGothicBold.ttf",
    "/usr/share/fonts/truetype/nanum/NanumGothic.ttf",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Bold.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
];

#[derive(Debug, thiserror::Error)]
pub enum AnnotateError {
    #[error("no font with Hangul found (looked for {}); install fonts-nanum (scripts/setup.sh does) or set archive.snapshots.font", FONT_SEARCH.join(", "))]
    NoFont,
    #[error("cannot read the font {path}: {source}")]
    ReadFont {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a usable font: {reason}")]
    BadFont { path: PathBuf, reason: String },
    #[error("{path} has no Hangul glyphs; snapshots need a font that covers Korean")]
    NoHangul { path: PathBuf },
    #[error("cannot encode the annotated JPEG: {0}")]
    Encode(#[from] image::ImageError),
}

/// `path`, or the first font of [`FONT_SEARCH`] that exists.
fn font_path(path: Option<&Path>) -> Result<PathBuf, AnnotateError> {
    match path {
        Some(p) => Ok(p.to_path_buf()),
        None => FONT_SEARCH
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .ok_or(AnnotateError::NoFont),
    }
}

/// The bytes of `path`, or of the first font of [`FONT_SEARCH`] that exists (for other
/// drawing code: loadgen's chart).
pub fn font_bytes(path: Option<&Path>) -> Result<Vec<u8>, AnnotateError> {
    let path = font_path(path)?;
    std::fs::read(&path).map_err(|source| AnnotateError::ReadFont { path, source })
}

/// The font, loaded once.
pub struct Typeface {
    font: FontVec,
    pub path: PathBuf,
}

impl Typeface {
    /// Loads `path`, or the first font of [`FONT_SEARCH`] that exists; refuses a font without
    /// Hangul.
    pub fn load(path: Option<&Path>) -> Result<Typeface, AnnotateError> {
        let path = font_path(path)?;
        let bytes = std::fs::read(&path).map_err(|source| AnnotateError::ReadFont {
            path: path.clone(),
            source,
        })?;
        let font =
            FontVec::try_from_vec_and_index(bytes, 0).map_err(|e| AnnotateError::BadFont {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        if !covers(&font, "위험 감지") {
            return Err(AnnotateError::NoHangul { path });
        }
        Ok(Typeface { font, path })
    }

    /// Whether every character of `text` (spaces aside) has a glyph.
    pub fn covers(&self, text: &str) -> bool {
        covers(&self.font, text)
    }
}

fn covers(font: &FontVec, text: &str) -> bool {
    text.chars()
        .filter(|c| !c.is_whitespace())
        .all(|c| font.glyph_id(c).0 != 0)
}

/// What is drawn over the frame.
#[derive(Debug, Clone, Default)]
pub struct Overlay {
    pub boxes: Vec<LabelledBox>,
    /// Zone outlines in image pixels.
    pub zones: Vec<Vec<(f32, f32)>>,
    pub level: Option<Level>,
    /// First banner line: level, score, camera, time.
    pub headline: String,
    /// Second banner line: the description (Korean or English).
    pub description: String,
}

#[derive(Debug, Clone)]
pub struct LabelledBox {
    pub bbox: BBox,
    /// "person 0.87", "#12 person 0.87".
    pub label: String,
    /// Inside a zone: drawn in red and thicker.
    pub in_zone: bool,
}

const ZONE: Rgb<u8> = Rgb([0, 220, 255]);
const TEXT: Rgb<u8> = Rgb([255, 255, 255]);

/// The banner's colour for a level.
pub fn level_colour(level: Option<Level>) -> Rgb<u8> {
    match level {
        Some(Level::Critical) => Rgb([200, 20, 30]),
        Some(Level::High) => Rgb([230, 100, 0]),
        Some(Level::Medium) => Rgb([190, 150, 0]),
        Some(Level::Low) => Rgb([30, 110, 200]),
        _ => Rgb([90, 90, 90]),
    }
}

/// The banner's height for an image `width` pixels wide (two lines of text).
pub fn banner_height(width: u32) -> u32 {
    2 * line_height(width) + 12
}

fn line_height(width: u32) -> u32 {
    (width / 32).clamp(16, 48)
}

/// Draws `overlay` on a copy of `frame`, with a banner above it.
pub fn render(frame: &RgbImage, overlay: &Overlay, face: &Typeface) -> RgbImage {
    let (w, h) = frame.dimensions();
    let banner = banner_height(w);
    let mut out = RgbImage::from_pixel(w, h + banner, level_colour(overlay.level));
    image::imageops::replace(&mut out, frame, 0, i64::from(banner));
    let line = line_height(w);
    let scale = PxScale::from(line as f32);
    let small = PxScale::from((line as f32 * 0.8).max(13.0));
    draw_text_mut(&mut out, TEXT, 8, 4, scale, &face.font, &overlay.headline);
    let (scale, description) = fit(
        &face.font,
        small,
        &overlay.description,
        w.saturating_sub(16),
    );
    draw_text_mut(
        &mut out,
        TEXT,
        8,
        6 + line as i32,
        scale,
        &face.font,
        &description,
    );
    let dy = banner as f32;
    for zone in &overlay.zones {
        for (a, b) in zone.iter().zip(zone.iter().cycle().skip(1)) {
            draw_line_segment_mut(&mut out, (a.0, a.1 + dy), (b.0, b.1 + dy), ZONE);
        }
    }
    for b in &overlay.boxes {
        let colour = if b.in_zone {
            Rgb([255, 40, 40])
        } else {
            Rgb([255, 200, 0])
        };
        let thickness = if b.in_zone { 3 } else { 2 };
        let (x1, y1) = (b.bbox.x1.round() as i32, (b.bbox.y1 + dy).round() as i32);
        let (bw, bh) = (
            (b.bbox.x2 - b.bbox.x1).round().max(1.0) as u32,
            (b.bbox.y2 - b.bbox.y1).round().max(1.0) as u32,
        );
        for t in 0..thickness {
            draw_hollow_rect_mut(
                &mut out,
                Rect::at(x1 - t, y1 - t).of_size(bw + 2 * t as u32, bh + 2 * t as u32),
                colour,
            );
        }
        let (tw, th) = text_size(small, &face.font, &b.label);
        let ty = (y1 - th as i32 - 4).max(banner as i32);
        draw_filled_rect_mut(&mut out, Rect::at(x1, ty).of_size(tw + 6, th + 4), colour);
        draw_text_mut(
            &mut out,
            Rgb([0, 0, 0]),
            x1 + 3,
            ty + 1,
            small,
            &face.font,
            &b.label,
        );
    }
    out
}

/// The description at a size that fits `width` pixels: smaller type down to 11 px, then cut
/// with an ellipsis.
fn fit(font: &FontVec, scale: PxScale, text: &str, width: u32) -> (PxScale, String) {
    let wide = |s: PxScale, t: &str| text_size(s, font, t).0;
    let full = wide(scale, text);
    if full <= width {
        return (scale, text.to_string());
    }
    let smaller = PxScale::from((scale.y * width as f32 / full as f32).max(11.0));
    if wide(smaller, text) <= width {
        return (smaller, text.to_string());
    }
    let mut chars: Vec<char> = text.chars().collect();
    while !chars.is_empty() {
        chars.pop();
        let cut: String = chars.iter().collect::<String>() + "…";
        if wide(smaller, &cut) <= width {
            return (smaller, cut);
        }
    }
    (smaller, String::new())
}

/// JPEG bytes of `image`.
pub fn jpeg(image: &RgbImage, quality: u8) -> Result<Vec<u8>, AnnotateError> {
    let mut out = Vec::new();
    let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality);
    image.write_with_encoder(encoder)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn face() -> Typeface {
        Typeface::load(None).expect("a font with Hangul (scripts/setup.sh installs fonts-nanum)")
    }

    /// Pixels of nearly white text (anti-aliased edges blend with the banner).
    fn ink(image: &RgbImage, x0: u32, y0: u32, x1: u32, y1: u32) -> usize {
        (y0..y1)
            .flat_map(|y| (x0..x1).map(move |x| (x, y)))
            .filter(|(x, y)| image.get_pixel(*x, *y).0.iter().all(|c| *c > 200))
            .count()
    }

    #[test]
    fn hangul_renders_in_the_banner() {
        let face = face();
        assert!(face.covers("광장에 사람 12명, 위험 높음"));
        let frame = RgbImage::from_pixel(640, 360, Rgb([40, 40, 40]));
        let overlay = Overlay {
            level: Some(Level::High),
            headline: "HIGH 72/100".into(),
            description: "광장에 사람 12명".into(),
            ..Default::default()
        };
        let out = render(&frame, &overlay, &face);
        let banner = banner_height(640);
        assert_eq!(out.dimensions(), (640, 360 + banner));
        // The description's line holds white ink where the Hangul was drawn.
        let line = line_height(640);
        let inked = ink(&out, 0, 6 + line, 320, banner);
        // The same line with characters the font lacks would draw nothing (or boxes): the
        // Hangul has glyphs of its own.
        assert!(face.covers(&overlay.description));
        assert!(
            inked > 100,
            "only {inked} text pixels in the description line"
        );
    }
}
