//! vigil turns frames from drones and CCTV cameras into risk events for control rooms.
//!
//! # Layout
//!
//! The data path, one straight line:
//!
//! ```text
//! vigil.frames.<site>.<camera> ─▶ ingest ─▶ pipeline ─▶ ingest ─▶ vigil.events.<level>.<site>.<camera>
//!   (VIGIL_FRAMES, work queue)      │                       (publish, await ack, then ack the frame)
//!                                   ▼
//!        vision::decode ─▶ vision::Letterboxer ─▶ detect::Detector ─▶ scene (ground, zones) ─▶ risk
//!
//! VIGIL_EVENTS ─▶ archive ─▶ MongoDB (_id = event_id)
//! VIGIL_EVENTS ─▶ situations (per camera: order ─▶ track ─▶ rules ─▶ alerts)
//!     ─▶ vigil.alerts.<level>.<site>.<camera> (VIGIL_ALERTS) ─▶ archive ─▶ MongoDB alerts
//!     ─▶ vigil.tracks.<site>.<camera> (live tracks, core NATS)
//! vigil.analyze ─▶ service ─▶ pipeline ─▶ reply
//! MongoDB ─▶ archive::query ─▶ archive::replay ─▶ vigil.replay.<events|alerts>.<level>.<site>.<camera>
//!         ─▶ archive::reevaluate (situations::Evaluator, two configurations) ─▶ differences
//! ```
//!
//! - [`contract`]: wire types (frame, risk event, error reply, dead letter), subjects, codec.
//! - [`config`]: figment configuration, validated; each module owns its own section.
//! - [`vision`]: bytes → RGB image (with limits) → letterboxed input tensor.
//! - [`detect`]: ONNX Runtime session pool, model metadata, output decoding and NMS.
//! - [`geo`]: homographies (fitted, RANSAC, from a drone's pose), ground ↔ WGS84, polygons.
//! - [`scene`]: a camera's ground for one frame (calibration or pose); placing objects on it
//!   with error radii, zones.
//! - [`risk`]: the risk policy: score, level, priority, description.
//! - [`motion`]: motion gating: a still view skips the model and reuses its last detections.
//! - [`pipeline`]: `process(frame) -> event`, the only place that orders the stages.
//! - [`streams`]: NATS connection, JetStream streams and durable consumers.
//! - [`ingest`]: the frame processor: pull, process, publish, ack / DLQ / retry.
//! - [`archive`]: MongoDB: the archiver (events, and alerts by newest revision), indexed
//!   queries, replay, re-evaluation, retention.
//! - [`snapshots`]: the frames behind important events, kept with an annotated JPEG (GridFS
//!   or a directory), off the hot path.
//! - [`situations`]: the stateful stage: tracks, rules, alert lifecycles, failover.
//! - [`service`]: the NATS service answering `vigil.analyze`.
//! - [`publish`]: events and dead letters into JetStream (ack awaited, retried while it lasts).
//! - [`backlog`]: counts the frames JetStream dropped unanalysed (backlog limit, age).
//! - [`serve`]: `vigil serve`, all of the above with a bounded, draining shutdown.
//! - [`tools`]: clients for people at a terminal: play, watch, analyze one image, calibrate,
//!   bev, and query/replay/reevaluate the archive.

// No unwrap or expect in the service: a bad message is an outcome, never a crash (tests may).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod archive;
pub mod backlog;
pub mod config;
pub mod contract;
pub mod detect;
pub mod geo;
pub mod ingest;
pub mod motion;
pub mod pipeline;
pub mod publish;
pub mod risk;
pub mod scene;
pub mod serve;
pub mod service;
pub mod situations;
pub mod snapshots;
pub mod streams;
pub mod tools;
pub mod vision;
