//! Real servers for the integration tests: a nats-server with JetStream started per test on
//! a free port, a MongoDB-wire server (TEST_MONGODB_URI, which scripts/test.sh points at
//! a SecantusDB it starts; otherwise one is started here from the project's .venv), the real
//! model, and the shared test images.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use vigil::config::Config;
use vigil::contract::{Encoding, Frame};

pub mod rig;
pub mod sequence;
pub mod servers;

pub use servers::Nats as NatsServer;

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

pub fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl servers::Nats {
    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(self.url())
            .await
            .expect("connect to the test NATS")
    }
}

/// The MongoDB-wire server shared by the tests of one binary.
pub fn mongodb_uri() -> String {
    static URI: OnceLock<(String, Option<SecantusGuard>)> = OnceLock::new();
    URI.get_or_init(|| match std::env::var("TEST_MONGODB_URI") {
        Ok(uri) => (uri, None),
        Err(_) => {
            let port = free_port();
            let child = servers::dies_with_parent(&mut Command::new(".venv/bin/python"))
                .args([
                    "-m",
                    "secantus",
                    "--port",
                    &port.to_string(),
                    "--storage-path",
                    ":memory:",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("cannot start SecantusDB from .venv (run scripts/setup.sh)");
            wait_for_port(port, "SecantusDB");
            (
                format!("mongodb://127.0.0.1:{port}"),
                Some(SecantusGuard(child)),
            )
        }
    })
    .0
    .clone()
}

/// Kept for the life of the test binary; the child dies with it (`dies_with_parent`).
struct SecantusGuard(#[allow(dead_code)] Child);

/// A database name no other test uses.
pub fn unique_db(test: &str) -> String {
    format!("vigil_test_{test}_{}", Utc::now().timestamp_micros())
}

/// The shipped configuration, pointed at the test servers, one session (2-core machines).
pub fn config(nats: &NatsServer, database: &str) -> Config {
    let mut config =
        Config::from_toml(include_str!("../../config/vigil.toml")).expect("shipped config");
    config.nats.url = nats.url();
    config.archive.uri = mongodb_uri();
    config.archive.database = database.to_string();
    config.archive.batch_wait_ms = 100;
    config.detector.sessions = 1;
    config.processor.ack_wait_s = 60;
    config
}

/// Runs `vigil serve` in this process until the returned token is cancelled.
pub async fn serve(config: &Config) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    // VIGIL_LOG=debug shows vigil's logs in a failing test's output.
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("VIGIL_LOG").unwrap_or_else(|_| "off".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
    let shutdown = CancellationToken::new();
    let server = vigil::serve::Server::build(config, &shutdown)
        .await
        .expect("vigil serve builds");
    let handle = tokio::spawn(server.run(shutdown.clone()));
    (shutdown, handle)
}

pub fn testdata() -> PathBuf {
    let dir = std::env::var("TEST_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            ["../shared/testdata", "testdata"]
                .iter()
                .map(PathBuf::from)
                .find(|p| p.is_dir())
                .unwrap_or_else(|| PathBuf::from("testdata"))
        });
    assert!(
        dir.join("images").is_dir(),
        "test images missing in {} (run scripts/setup.sh)",
        dir.display()
    );
    dir
}

pub fn image(name: &str) -> Vec<u8> {
    let path = testdata().join("images").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn frame(frame_id: &str, image: Vec<u8>) -> Frame {
    Frame {
        frame_id: frame_id.into(),
        captured_at: Utc::now(),
        image: image.into(),
        site: None,
        camera_id: None,
        pose: None,
        meta: Default::default(),
    }
}

pub fn encode(frame: &Frame, encoding: Encoding) -> bytes::Bytes {
    encoding.encode(frame).expect("encode frame").into()
}

fn schema(name: &str) -> jsonschema::Validator {
    let text = std::fs::read_to_string(Path::new("schemas").join(name)).expect("schema file");
    let schema: serde_json::Value = serde_json::from_str(&text).expect("schema is JSON");
    jsonschema::validator_for(&schema).expect("schema compiles")
}

/// A message body as JSON, whichever encoding it came in.
pub fn body_json(headers: Option<&async_nats::HeaderMap>, payload: &[u8]) -> serde_json::Value {
    match Encoding::of(headers) {
        Encoding::Json => serde_json::from_slice(payload).expect("JSON body"),
        Encoding::Msgpack => rmp_serde::from_slice(payload).expect("MessagePack body"),
    }
}

pub fn assert_valid(schema_file: &str, value: &serde_json::Value) {
    let validator = schema(schema_file);
    let errors: Vec<String> = validator
        .iter_errors(value)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect();
    assert!(
        errors.is_empty(),
        "{schema_file} violations: {errors:#?}\n{value:#}"
    );
}

/// Waits for `condition` to hold, polling.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Writes figures a test measured to `target/tmp/reliability/<name>.json`, for the reports in
/// docs/ (tests never fail on them).
pub fn report(name: &str, figures: serde_json::Value) {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("reliability");
    let _ = std::fs::create_dir_all(&dir);
    let text = serde_json::to_string_pretty(&figures).unwrap_or_default();
    let _ = std::fs::write(dir.join(format!("{name}.json")), text);
    eprintln!("{name}: {figures}");
}
