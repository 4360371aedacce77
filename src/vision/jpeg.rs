//! JPEG specifics: a structural check before decoding, and decoding through zune-jpeg (the
//! decoder `image` itself uses) with stricter settings.
//!
//! Why: JPEG decoders are built to show something for a damaged file. When the entropy-coded
//! data of a scan ends early, zune-jpeg (like libjpeg) pads it with zero bits and carries on,
//! so a frame cut in transit, and one "repaired" by appending an end-of-image marker, decodes
//! to a picture whose missing part is grey or a repeated block pattern. vigil must not analyse
//! that as if it were what the camera saw. So before decoding:
//! - the segments are walked from SOI: every segment must fit the file, the scan data must be
//!   followed by a marker, and the image must end with EOI (bytes after it are ignored);
//! - a baseline image coded in one scan must carry at least 2 bits per 8×8 block, the least
//!   any Huffman table can spend (a 1-bit DC code and a 1-bit end-of-block).
//!
//! A scan cut late (most of its data present) and then given an end marker still passes:
//! nothing in the file then says how much is missing.

use image::RgbImage;

use super::{ImageLimits, Probe, VisionError};

/// The frame header's facts the checks need.
struct FrameHeader {
    /// Baseline or extended sequential Huffman (SOF0, SOF1): one pass per scan.
    sequential: bool,
    width: u32,
    height: u32,
    /// (horizontal, vertical) sampling factors per component.
    sampling: Vec<(u32, u32)>,
}

impl FrameHeader {
    /// 8×8 blocks a scan over all components codes.
    fn blocks(&self) -> u64 {
        let h_max = self.sampling.iter().map(|s| s.0).max().unwrap_or(1).max(1);
        let v_max = self.sampling.iter().map(|s| s.1).max().unwrap_or(1).max(1);
        if self.sampling.len() == 1 {
            // A single-component scan is not interleaved: one block per 8×8 of the image.
            return u64::from(self.width.div_ceil(8)) * u64::from(self.height.div_ceil(8));
        }
        let mcus =
            u64::from(self.width.div_ceil(8 * h_max)) * u64::from(self.height.div_ceil(8 * v_max));
        let per_mcu: u64 = self.sampling.iter().map(|(h, v)| u64::from(h * v)).sum();
        mcus * per_mcu
    }
}

/// Walks the JPEG's segments; see the module documentation for what is checked.
pub(super) fn check_structure(bytes: &[u8]) -> Result<(), VisionError> {
    let truncated = VisionError::Truncated;
    let mut pos = 2; // after SOI, which format sniffing saw
    let mut frame: Option<FrameHeader> = None;
    let mut scans = 0u32;
    let mut full_scan_bytes: Option<usize> = None;
    loop {
        // Fill bytes (FF) may precede a marker; stray bytes between segments are skipped
        // (some encoders write them, and they lose no pixels).
        while pos < bytes.len() && bytes[pos] != 0xFF {
            pos += 1;
        }
        while pos + 1 < bytes.len() && bytes[pos + 1] == 0xFF {
            pos += 1;
        }
        if pos + 1 >= bytes.len() {
            return Err(truncated("no end-of-image marker"));
        }
        let marker = bytes[pos + 1];
        match marker {
            0xD9 => break,
            0x01 | 0xD0..=0xD8 => {
                pos += 2;
                continue;
            }
            _ => {}
        }
        let Some(len_bytes) = bytes.get(pos + 2..pos + 4) else {
            return Err(truncated("a segment header is cut off"));
        };
        let len = usize::from(u16::from_be_bytes([len_bytes[0], len_bytes[1]]));
        let end = pos + 2 + len;
        if len < 2 || end > bytes.len() {
            return Err(truncated("a segment is longer than the file"));
        }
        let body = &bytes[pos + 4..end];
        match marker {
            // Start of frame: every SOFn except DHT (C4), JPG (C8) and DAC (CC).
            0xC0..=0xCF if !matches!(marker, 0xC4 | 0xC8 | 0xCC) => {
                frame = Some(parse_frame(marker, body)?);
            }
            0xDA => {
                let components = usize::from(*body.first().ok_or(truncated("empty scan header"))?);
                let (data, next) = entropy_coded(bytes, end)?;
                scans += 1;
                if frame
                    .as_ref()
                    .is_some_and(|f| components == f.sampling.len())
                {
                    full_scan_bytes = Some(data);
                }
                pos = next;
                continue;
            }
            _ => {}
        }
        pos = end;
    }
    if scans == 0 {
        return Err(truncated("no image data (no scan)"));
    }
    if let (Some(frame), Some(data), 1) = (&frame, full_scan_bytes, scans) {
        // At least 2 bits per block: the shortest DC code and the shortest end-of-block.
        if frame.sequential && (data as u64) * 8 < 2 * frame.blocks() {
            return Err(truncated(
                "its scan holds less data than its blocks need (cut, then given an end marker)",
            ));
        }
    }
    Ok(())
}

fn parse_frame(marker: u8, body: &[u8]) -> Result<FrameHeader, VisionError> {
    let cut = || VisionError::Truncated("the frame header is cut off");
    let header = body.get(..6).ok_or_else(cut)?;
    let height = u32::from(u16::from_be_bytes([header[1], header[2]]));
    let width = u32::from(u16::from_be_bytes([header[3], header[4]]));
    let count = usize::from(header[5]);
    let components = body.get(6..6 + 3 * count).ok_or_else(cut)?;
    let sampling = components
        .chunks_exact(3)
        .map(|c| (u32::from(c[1] >> 4), u32::from(c[1] & 0x0F)))
        .collect();
    Ok(FrameHeader {
        sequential: matches!(marker, 0xC0 | 0xC1),
        width,
        height,
        sampling,
    })
}

/// The entropy-coded data after a scan header ending at `start`: its length without the
/// stuffed zero bytes, and where the marker that ends it begins. Restart markers (RSTn) are
/// part of the data. Data that runs to the end of the file is truncated.
fn entropy_coded(bytes: &[u8], start: usize) -> Result<(usize, usize), VisionError> {
    let mut pos = start;
    let mut data = 0;
    while pos + 1 < bytes.len() {
        if bytes[pos] == 0xFF {
            match bytes[pos + 1] {
                0x00 => {
                    data += 1;
                    pos += 2;
                    continue;
                }
                0xD0..=0xD7 => {
                    pos += 2;
                    continue;
                }
                0xFF => {
                    pos += 1;
                    continue;
                }
                _ => return Ok((data, pos)),
            }
        }
        data += 1;
        pos += 1;
    }
    Err(VisionError::Truncated(
        "its scan data runs to the end of the file",
    ))
}

/// Decodes with zune-jpeg in strict mode, which refuses data errors inside a scan that the
/// lenient default would paint over. One leniency is kept: stray bytes between header
/// segments, which some encoders write and which lose no pixels.
pub(super) fn decode(
    bytes: &[u8],
    probe: &Probe,
    limits: &ImageLimits,
) -> Result<RgbImage, VisionError> {
    use zune_core::bytestream::ZCursor;
    use zune_core::colorspace::ColorSpace;
    use zune_core::options::DecoderOptions;
    use zune_jpeg::errors::DecodeErrors;

    let run = |strict: bool| {
        let options = DecoderOptions::default()
            .jpeg_set_out_colorspace(ColorSpace::RGB)
            .set_strict_mode(strict)
            .set_max_width(limits.max_side as usize)
            .set_max_height(limits.max_side as usize);
        zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(bytes), options).decode()
    };
    let pixels = match run(true) {
        Ok(pixels) => pixels,
        Err(DecodeErrors::FormatStatic(m)) if m.contains("Extra bytes between headers") => {
            run(false).map_err(VisionError::Jpeg)?
        }
        Err(e) => return Err(VisionError::Jpeg(e)),
    };
    let got = pixels.len();
    RgbImage::from_raw(probe.width, probe.height, pixels).ok_or(VisionError::JpegSize {
        width: probe.width,
        height: probe.height,
        got,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_follow_the_sampling() {
        let yuv420 = FrameHeader {
            sequential: true,
            width: 256,
            height: 192,
            sampling: vec![(2, 2), (1, 1), (1, 1)],
        };
        // 16 × 12 MCUs of 6 blocks.
        assert_eq!(yuv420.blocks(), 16 * 12 * 6);
        let grey = FrameHeader {
            sequential: true,
            width: 17,
            height: 9,
            sampling: vec![(1, 1)],
        };
        assert_eq!(grey.blocks(), 3 * 2);
    }

    #[test]
    fn entropy_data_skips_stuffing_and_restarts() {
        let bytes = [0x12, 0xFF, 0x00, 0x34, 0xFF, 0xD0, 0x56, 0xFF, 0xD9];
        assert_eq!(entropy_coded(&bytes, 0).unwrap(), (4, 7));
        assert!(entropy_coded(&bytes[..6], 0).is_err());
    }
}
