//! `vigil analyze`: one image to `vigil.analyze`, the reply back; `--annotate` draws the
//! reply's boxes on the image.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;

use super::{nats_err, ToolError};
use crate::config::Config;
use crate::contract::{subjects, Encoding, ErrorReply, Frame, RiskEvent};

/// The outcome of one analyze request.
pub enum AnalyzeReply {
    Event(Box<RiskEvent>),
    Error(ErrorReply),
}

/// Sends one image to `vigil.analyze`.
pub async fn analyze(
    config: &Config,
    image: &Path,
    site: Option<String>,
    camera: Option<String>,
    timeout: Duration,
) -> Result<AnalyzeReply, ToolError> {
    let bytes = std::fs::read(image).map_err(|source| ToolError::Read {
        path: image.to_path_buf(),
        source,
    })?;
    let client = crate::streams::connect(&config.nats).await?;
    let max_payload = client.server_info().max_payload;
    let frame = Frame {
        frame_id: image
            .file_name()
            .and_then(|s| s.to_str())
            .unwrap_or("image")
            .chars()
            .take(64)
            .collect::<String>()
            + "-"
            + &Utc::now().timestamp_millis().to_string(),
        captured_at: Utc::now(),
        image: bytes.into(),
        site,
        camera_id: camera,
        pose: None,
        meta: BTreeMap::new(),
    };
    let body = Encoding::Msgpack.encode(&frame)?;
    if body.len() > max_payload {
        return Err(ToolError::TooLarge {
            path: image.to_path_buf(),
            size: body.len(),
            max_payload,
        });
    }
    let request = async_nats::Request::new()
        .payload(Bytes::from(body))
        .timeout(Some(timeout));
    let reply = client
        .send_request(subjects::ANALYZE, request)
        .await
        .map_err(nats_err)?;
    let encoding = Encoding::of(reply.headers.as_ref());
    let is_error = reply
        .headers
        .as_ref()
        .is_some_and(|h| h.get(async_nats::service::NATS_SERVICE_ERROR).is_some());
    Ok(if is_error {
        AnalyzeReply::Error(encoding.decode(&reply.payload)?)
    } else {
        AnalyzeReply::Event(Box::new(encoding.decode(&reply.payload)?))
    })
}

/// Draws the event's boxes on the frame (thicker for objects inside a zone) and writes it to
/// `out`, in the format its extension names.
pub fn annotate(image: &[u8], event: &RiskEvent, out: &Path) -> Result<(), ToolError> {
    use imageproc::drawing::draw_hollow_rect_mut;
    use imageproc::rect::Rect;

    let mut canvas =
        crate::vision::decode(image, &Default::default()).map_err(ToolError::AnnotateDecode)?;
    for object in &event.objects {
        let b = &object.bbox;
        let colour = if object.zones.is_empty() {
            image::Rgb([255, 200, 0])
        } else {
            image::Rgb([255, 40, 40])
        };
        let thickness = if object.zones.is_empty() { 2 } else { 4 };
        for t in 0..thickness {
            let (x, y) = (b.x1 as i32 - t, b.y1 as i32 - t);
            let (w, h) = (
                (b.x2 - b.x1) as u32 + 2 * t as u32,
                (b.y2 - b.y1) as u32 + 2 * t as u32,
            );
            draw_hollow_rect_mut(
                &mut canvas,
                Rect::at(x, y).of_size(w.max(1), h.max(1)),
                colour,
            );
        }
    }
    canvas.save(out).map_err(ToolError::AnnotateWrite)
}

/// What `vigil analyze` was asked to do.
pub struct AnalyzeOptions {
    pub image: std::path::PathBuf,
    pub site: Option<String>,
    pub camera: Option<String>,
    pub json: bool,
    pub annotate: Option<std::path::PathBuf>,
    pub timeout: Duration,
}

/// Runs `vigil analyze`: prints the reply (a report or JSON) and writes the annotated image.
/// Returns whether the reply was an event (false: an error reply, already printed).
pub async fn run(config: &Config, options: &AnalyzeOptions) -> Result<bool, ToolError> {
    let reply = analyze(
        config,
        &options.image,
        options.site.clone(),
        options.camera.clone(),
        options.timeout,
    )
    .await?;
    if let (AnalyzeReply::Event(event), Some(out)) = (&reply, &options.annotate) {
        let bytes = std::fs::read(&options.image).map_err(|source| ToolError::Read {
            path: options.image.clone(),
            source,
        })?;
        annotate(&bytes, event, out)?;
        eprintln!("annotated image written to {}", out.display());
    }
    Ok(match (reply, options.json) {
        (AnalyzeReply::Event(event), true) => {
            super::print_lines(&[pretty(&*event)]);
            true
        }
        (AnalyzeReply::Event(event), false) => {
            super::print_text(&super::report::event_report(&event));
            true
        }
        (AnalyzeReply::Error(error), true) => {
            super::print_lines(&[pretty(&error)]);
            false
        }
        (AnalyzeReply::Error(error), false) => {
            eprintln!("error {}: {}", error.error.code, error.error.message);
            false
        }
    })
}

fn pretty<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}
