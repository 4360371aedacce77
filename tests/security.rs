//! Nobody where they don't belong: NATS with the shipped permission template
//! (config/nats-auth.conf) and TLS, NKey, token and creds (operator mode) authentication, and
//! MongoDB with credentials and TLS, each against a real server started for the test. vigil
//! works with each; what a role may not do is refused by the server; no secret reaches the log.

mod common;

use std::path::Path;
use std::time::Duration;

use async_nats::jetstream;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use futures::StreamExt;
use mongodb::bson::doc;
use tokio::sync::mpsc;
use vigil::config::Config;
use vigil::contract::Encoding;

use common::rig;
use common::servers::{Mongo, Nats, Vigil};

/// A CA and a certificate for 127.0.0.1 signed by it, as PEM files in `dir`.
struct Pki {
    ca: std::path::PathBuf,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    /// Certificate and key in one file (MongoDB's `tlsCertificateKeyFile` shape).
    cert_and_key: std::path::PathBuf,
}

fn pki(dir: &Path) -> Pki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "vigil test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    Pki {
        ca: write("ca.pem", ca.pem()),
        cert: write("server.pem", cert.pem()),
        key: write("server-key.pem", key.serialize_pem()),
        cert_and_key: write("server-both.pem", cert.pem() + &key.serialize_pem()),
    }
}

/// A client that reports the server's errors (permission violations) on a channel.
async fn client_as(
    url: &str,
    user: &str,
    password: &str,
    inbox: &str,
    ca: &Path,
) -> (async_nats::Client, mpsc::UnboundedReceiver<String>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let client = async_nats::ConnectOptions::new()
        .user_and_password(user.into(), password.into())
        .custom_inbox_prefix(inbox)
        .add_root_certificates(ca.to_path_buf())
        .require_tls(true)
        .event_callback(move |event| {
            let tx = tx.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    let _ = tx.send(e.to_string());
                }
            }
        })
        .connect(url)
        .await
        .unwrap_or_else(|e| panic!("{user} connects: {e}"));
    (client, rx)
}

async fn violation(errors: &mut mpsc::UnboundedReceiver<String>, what: &str) -> String {
    let e = tokio::time::timeout(Duration::from_secs(10), errors.recv())
        .await
        .unwrap_or_else(|_| panic!("no permission violation for {what}"))
        .unwrap();
    assert!(
        e.to_lowercase().contains("permissions violation"),
        "{what}: {e}"
    );
    e
}

const PASSWORDS: [(&str, &str); 4] = [
    ("VIGIL_NATS_PASSWORD", "vigil-s3cret-pw"),
    ("CONTROL_ROOM_NATS_PASSWORD", "control-pw"),
    ("ANALYZE_NATS_PASSWORD", "analyze-pw"),
    ("CAMERA_SEOUL_HQ_GATE_2_PASSWORD", "gate-2-pw"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_permission_template_lets_each_role_do_its_job_and_nothing_else() {
    let certs = tempfile::tempdir().unwrap();
    let pki = pki(certs.path());
    let template = std::fs::read_to_string("config/nats-auth.conf").unwrap();
    let tls = format!(
        "tls {{ cert_file: {:?}, key_file: {:?} }}\ninclude ./nats-auth.conf",
        pki.cert, pki.key
    );
    let nats = Nats::start_secured(&tls, &[("nats-auth.conf", &template)], &PASSWORDS);
    let url = nats.url();

    // vigil with its user, the password in a file, TLS required, its own inbox prefix.
    let password_file = certs.path().join("vigil-password");
    std::fs::write(&password_file, "vigil-s3cret-pw\n").unwrap();
    let (mongo, db) = rig::mongo("security");
    let mut config = rig::fault_config(&url, &mongo.uri(), &db);
    config.nats.user = Some("vigil".into());
    config.nats.password_file = Some(password_file.clone());
    config.nats.tls_ca_file = Some(pki.ca.clone());
    config.nats.tls_required = true;
    config.nats.inbox_prefix = Some("_INBOX_vigil".into());
    let vigil = Vigil::start(&config);

    let (control, mut control_errors) = client_as(
        &url,
        "control-room",
        "control-pw",
        "_INBOX_control",
        &pki.ca,
    )
    .await;
    let (camera, mut camera_errors) = client_as(
        &url,
        "seoul-hq.gate-2",
        "gate-2-pw",
        "_INBOX_seoul-hq_gate-2",
        &pki.ca,
    )
    .await;
    let (analyst, mut analyst_errors) = client_as(
        &url,
        "analyze-client",
        "analyze-pw",
        "_INBOX_analyze",
        &pki.ca,
    )
    .await;
    vigil.ready(&analyst).await;

    // The control room follows events through its own JetStream consumer.
    let control_js = jetstream::new(control.clone());
    let events = vigil::tools::watch::events(&control_js, "vigil.events.>")
        .await
        .expect("a control room may read VIGIL_EVENTS");
    tokio::pin!(events);

    // The camera publishes its own frames; vigil analyses them; the control room sees them.
    let camera_js = jetstream::new(camera.clone());
    let frame = common::frame("gate-2-f1", common::image("zidane.jpg"));
    camera_js
        .publish(
            "vigil.frames.seoul-hq.gate-2",
            common::encode(&frame, Encoding::Msgpack),
        )
        .await
        .unwrap()
        .await
        .expect("the camera's own subject is stored");
    let event = tokio::time::timeout(Duration::from_secs(120), events.next())
        .await
        .expect("an event for the control room")
        .unwrap()
        .unwrap();
    assert_eq!(event.event_id, "seoul-hq.gate-2.gate-2-f1");

    // The analyze client gets replies.
    let reply = analyst
        .request(
            "vigil.analyze",
            common::encode(
                &common::frame("a-1", common::image("zidane.jpg")),
                Encoding::Msgpack,
            ),
        )
        .await
        .expect("an analyze reply");
    assert!(reply
        .headers
        .as_ref()
        .and_then(|h| h.get("Nats-Service-Error"))
        .is_none());

    // What each role may not do.
    let _ = camera
        .publish("vigil.frames.seoul-hq.gate-3", "x".into())
        .await;
    violation(
        &mut camera_errors,
        "a camera publishing another camera's frames",
    )
    .await;
    let _ = camera.subscribe("vigil.events.>").await;
    violation(&mut camera_errors, "a camera reading events").await;
    let _ = control.subscribe("vigil.frames.>").await;
    violation(&mut control_errors, "a control room reading frames").await;
    let _ = control
        .publish("vigil.events.critical.seoul-hq.gate-2", "forged".into())
        .await;
    violation(&mut control_errors, "a control room publishing an event").await;
    let _ = analyst
        .publish("vigil.frames.seoul-hq.gate-2", "x".into())
        .await;
    violation(&mut analyst_errors, "an analyze client publishing frames").await;
    let _ = analyst.subscribe("_INBOX_vigil.>").await;
    violation(
        &mut analyst_errors,
        "an analyze client reading vigil's replies",
    )
    .await;

    // A wrong password is refused, and said so.
    let mut wrong = config.clone();
    wrong.nats.password_file = None;
    wrong.nats.password = Some("not-it".into());
    let refused = vigil::streams::connect(&wrong.nats).await;
    assert!(
        matches!(refused, Err(vigil::streams::StreamsError::Connect { .. })),
        "{:?}",
        refused.err()
    );

    // The secret never reaches vigil's log.
    let log = rig::assert_no_panic(&vigil);
    assert!(!log.contains("vigil-s3cret-pw"));
    let printed = config.check_report();
    assert!(!printed.contains("vigil-s3cret-pw"));
}

/// vigil in this process, analysing one request, with `config`'s authentication.
async fn analyses_with(config: &Config) {
    let (shutdown, running) = common::serve(config).await;
    let client = vigil::streams::connect(&config.nats)
        .await
        .expect("the same credentials connect a tool");
    let reply = client
        .request(
            "vigil.analyze",
            common::encode(
                &common::frame("auth-1", common::image("zidane.jpg")),
                Encoding::Msgpack,
            ),
        )
        .await
        .expect("a reply");
    assert!(reply
        .headers
        .is_none_or(|h| h.get("Nats-Service-Error").is_none()));
    shutdown.cancel();
    running.await.unwrap();
}

fn in_process(nats: &Nats) -> Config {
    let mut config = common::config(nats, &common::unique_db("auth"));
    config.archive.enabled = false;
    config.processor.enabled = false;
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nkey_and_token_authenticate_vigil() {
    let dir = tempfile::tempdir().unwrap();
    let user = nkeys::KeyPair::new_user();
    let nats = Nats::start_secured(
        &format!(
            "authorization {{ users = [ {{ nkey: {} }} ] }}",
            user.public_key()
        ),
        &[],
        &[],
    );
    let seed_file = dir.path().join("vigil.nk");
    std::fs::write(&seed_file, user.seed().unwrap()).unwrap();
    let mut config = in_process(&nats);
    config.nats.nkey_seed_file = Some(seed_file);
    analyses_with(&config).await;
    config.nats.nkey_seed_file = None;
    assert!(
        vigil::streams::connect(&config.nats).await.is_err(),
        "no key, no entry"
    );

    let nats = Nats::start_secured(
        "authorization { token: $VIGIL_TOKEN }",
        &[],
        &[("VIGIL_TOKEN", "t0ken-for-vigil")],
    );
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "t0ken-for-vigil\n").unwrap();
    let mut config = in_process(&nats);
    config.nats.token_file = Some(token_file);
    analyses_with(&config).await;
}

/// A JWT as nats-server reads them: header, claims, ed25519 signature by `signer`.
fn jwt(mut claims: serde_json::Value, signer: &nkeys::KeyPair) -> String {
    claims["iat"] = chrono::Utc::now().timestamp().into();
    claims["iss"] = signer.public_key().into();
    claims["jti"] = format!(
        "{:x}",
        chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0)
    )
    .into();
    let part = |v: &serde_json::Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
    let head = part(&serde_json::json!({"typ": "JWT", "alg": "ed25519-nkey"}));
    let body = part(&claims);
    let signature = signer.sign(format!("{head}.{body}").as_bytes()).unwrap();
    format!("{head}.{body}.{}", URL_SAFE_NO_PAD.encode(signature))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creds_authenticate_vigil_on_an_operator_mode_server() {
    let operator = nkeys::KeyPair::new_operator();
    let account = nkeys::KeyPair::new_account();
    let system = nkeys::KeyPair::new_account();
    let user = nkeys::KeyPair::new_user();
    let operator_jwt = jwt(
        serde_json::json!({"sub": operator.public_key(), "name": "test-operator",
            "nats": {"type": "operator", "version": 2}}),
        &operator,
    );
    let account_claims = |key: &nkeys::KeyPair, name: &str, js: bool| {
        let mut limits = serde_json::json!({"subs": -1, "data": -1, "payload": -1,
            "imports": -1, "exports": -1, "wildcards": true, "conn": -1, "leaf": -1});
        if js {
            limits["mem_storage"] = (-1).into();
            limits["disk_storage"] = (-1).into();
            limits["streams"] = (-1).into();
            limits["consumer"] = (-1).into();
        }
        jwt(
            serde_json::json!({"sub": key.public_key(), "name": name,
                "nats": {"type": "account", "version": 2, "limits": limits}}),
            &operator,
        )
    };
    let account_jwt = account_claims(&account, "vigil", true);
    let system_jwt = account_claims(&system, "SYS", false);
    let user_jwt = jwt(
        serde_json::json!({"sub": user.public_key(), "name": "vigil",
            "nats": {"type": "user", "version": 2, "pub": {}, "sub": {},
                     "subs": -1, "data": -1, "payload": -1}}),
        &account,
    );
    let server = format!(
        "operator: {operator_jwt}\nsystem_account: {}\nresolver: MEMORY\n\
         resolver_preload: {{ {}: {account_jwt}, {}: {system_jwt} }}",
        system.public_key(),
        account.public_key(),
        system.public_key()
    );
    let nats = Nats::start_secured(&server, &[], &[]);
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("vigil.creds");
    std::fs::write(
        &creds,
        format!(
            "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
             -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
            user.seed().unwrap()
        ),
    )
    .unwrap();
    let mut config = in_process(&nats);
    config.nats.credentials_file = Some(creds);
    analyses_with(&config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_archive_uses_mongodb_credentials_and_tls() {
    // Provision a user on a fresh SecantusDB, then restart it with authentication and TLS.
    let mut mongo = Mongo::start();
    let admin = mongodb::Client::with_uri_str(mongo.uri()).await.unwrap();
    admin
        .database("admin")
        .run_command(doc! { "createUser": "archiver", "pwd": "m0ngo-pw", "roles": ["root"] })
        .await
        .expect("createUser");
    let pki = pki(mongo.dir());
    mongo.args = [
        "--auth",
        "--tls-cert-file",
        pki.cert.to_str().unwrap(),
        "--tls-key-file",
        pki.key.to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec();
    mongo.restart_gracefully();

    let nats = Nats::start();
    let password_file = mongo.dir().join("password");
    std::fs::write(&password_file, "m0ngo-pw\n").unwrap();
    let mut config = common::config(&nats, &common::unique_db("mongoauth"));
    config.processor.enabled = false;
    config.service.enabled = false;
    config.archive.uri = format!("mongodb://127.0.0.1:{}/?authSource=admin", mongo.port);
    config.archive.username = Some("archiver".into());
    config.archive.password_file = Some(password_file);
    config.archive.tls_ca_file = Some(pki.ca.clone());
    let _ = &pki.cert_and_key;
    let (shutdown, running) = common::serve(&config).await;
    let js = jetstream::new(nats.client().await);
    let event: vigil::contract::RiskEvent = serde_json::from_value(serde_json::json!({
        "schema": "vigil.event/1", "event_id": "sec.cam.f1", "frame_id": "f1", "site": "sec",
        "camera_id": "cam", "captured_at": "2026-11-26T12:00:00Z",
        "processed_at": "2026-11-26T12:00:01Z", "risk": {"score": 0, "level": "none"},
        "priority": 5, "description": "", "objects": [], "counts": {}, "zones": [],
        "image": {"width": 1, "height": 1}, "model": {"name": "m", "sha256": "0"},
        "timings_ms": {"queue": 0, "decode": 0, "infer": 0, "post": 0, "total": 0}, "meta": {}
    }))
    .unwrap();
    vigil::publish::publish_event(&js, &event, Encoding::Msgpack)
        .await
        .unwrap();
    let archive = vigil::archive::collection(&config.archive).await.unwrap();
    common::eventually(
        "the event archived over TLS with credentials",
        Duration::from_secs(60),
        || {
            let archive = archive.clone();
            async move {
                archive
                    .find_one(doc! { "_id": "sec.cam.f1" })
                    .await
                    .ok()
                    .flatten()
                    .is_some()
            }
        },
    )
    .await;
    shutdown.cancel();
    running.await.unwrap();

    // Without the password the same server refuses to serve.
    let mut anonymous = config.archive.clone();
    anonymous.username = None;
    anonymous.password_file = None;
    let refused = vigil::archive::collection(&anonymous)
        .await
        .unwrap()
        .find_one(doc! {})
        .await;
    assert!(refused.is_err(), "an unauthenticated read must fail");
}
