//! Clients of vigil for people at a terminal, kept apart from the service's modules: they
//! talk to a running `vigil serve` over NATS the way any integrator would.
//!
//! - [`play`]: plays a folder of frames as a camera and reports the events (the demo).
//! - [`watch`]: prints events as they are stored in VIGIL_EVENTS, once each.
//! - [`analyze`]: sends one image to `vigil.analyze`; draws the reply's boxes on it.
//! - [`report`]: events as readable lines and tables.
//! - [`status`]: `vigil ping` and `vigil stats` through the NATS service API.
//! - [`calibrate`]: a static camera's homography from surveyed points (RANSAC).
//! - [`bev`]: a frame seen from above, with zones, detections and a metre grid.
//! - [`archive`]: `vigil query`, `vigil replay` and `vigil reevaluate` over the archive.

use std::path::PathBuf;

pub mod analyze;
pub mod archive;
pub mod bev;
pub mod calibrate;
pub mod fleet;
pub mod loadgen;
pub mod play;
pub mod report;
pub mod status;
pub mod watch;

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error(transparent)]
    Streams(#[from] crate::streams::StreamsError),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no JPEG or PNG frames in {0}")]
    NoFrames(PathBuf),
    #[error("NATS: {0}")]
    Nats(#[source] async_nats::Error),
    #[error("no vigil on this NATS server ({what}): start `vigil serve` against it (it creates the streams and answers requests)")]
    NoVigil {
        what: &'static str,
        source: async_nats::Error,
    },
    #[error(transparent)]
    Codec(#[from] crate::contract::CodecError),
    #[error("{path} is {size} bytes; the NATS server accepts at most {max_payload} (raise max_payload in nats-server.conf)")]
    TooLarge {
        path: PathBuf,
        size: usize,
        max_payload: usize,
    },
    #[error(transparent)]
    Archive(#[from] crate::archive::ArchiveError),
    #[error("cannot decode the image to annotate: {0}")]
    AnnotateDecode(#[source] crate::vision::VisionError),
    #[error("cannot write the annotated image: {0}")]
    AnnotateWrite(#[source] image::ImageError),
    #[error(transparent)]
    Calibrate(Box<calibrate::CalibrateError>),
    #[error(transparent)]
    Config(Box<crate::config::ConfigError>),
    #[error(transparent)]
    Bev(#[from] bev::BevError),
    #[error(transparent)]
    Detect(Box<crate::detect::DetectError>),
    #[error("analysis failed: {0}")]
    Analysis(Box<crate::pipeline::AnalysisError>),
}

/// Prints lines to stdout; false once the reader has gone (`vigil events | head`), which ends
/// the command quietly instead of panicking on a broken pipe.
pub fn print_lines(lines: &[String]) -> bool {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    lines.iter().all(|l| writeln!(out, "{l}").is_ok()) && out.flush().is_ok()
}

/// Prints text as it is (a report that ends its own lines); false once the reader has gone.
pub fn print_text(text: &str) -> bool {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes()).is_ok() && out.flush().is_ok()
}

/// A NATS error of any kind, its source kept; one that means no vigil runs against this server
/// (no stream for its subjects, nobody answering its requests) says so.
pub(crate) fn nats_err(e: impl Into<async_nats::Error>) -> ToolError {
    let e = e.into();
    match missing_vigil(&*e) {
        Some(what) => ToolError::NoVigil { what, source: e },
        None => ToolError::Nats(e),
    }
}

fn missing_vigil(e: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    use async_nats::jetstream::context::{PublishError, PublishErrorKind};
    let mut next = Some(e);
    while let Some(err) = next {
        if let Some(p) = err.downcast_ref::<PublishError>() {
            if matches!(p.kind(), PublishErrorKind::StreamNotFound) {
                return Some("no stream stores what was published");
            }
        }
        if let Some(r) = err.downcast_ref::<async_nats::RequestError>() {
            if matches!(r.kind(), async_nats::RequestErrorKind::NoResponders) {
                return Some("nothing answers the request");
            }
        }
        let stream_missing = |j: &async_nats::jetstream::Error| {
            j.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND
        };
        if err
            .downcast_ref::<async_nats::jetstream::Error>()
            .is_some_and(stream_missing)
        {
            return Some("a vigil stream is missing");
        }
        if let Some(g) = err.downcast_ref::<async_nats::jetstream::context::GetStreamError>() {
            if let async_nats::jetstream::context::GetStreamErrorKind::JetStream(j) = g.kind() {
                if stream_missing(&j) {
                    return Some("a vigil stream is missing");
                }
            }
        }
        next = err.source();
    }
    None
}
