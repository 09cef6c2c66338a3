//! A PostgreSQL and an Apache Kafka node of the test's own, on free ports in a temporary directory, so
//! that a test can stop, stall and restart them without touching the shared test servers.
//!
//! PostgreSQL refuses to run as root; as root its commands run as the `postgres` OS user (as in
//! `compose/lib.sh`). Each server is stopped and its directory removed when dropped.
//!
//! These helpers panic on failure instead of returning errors: they only run inside tests, where
//! a server that cannot start must fail the test at once with its reason.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::missing_panics_doc)]

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use uuid::Uuid;

/// A port nobody listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn listening(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
        .is_ok()
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {timeout:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// Runs a PostgreSQL program as the cluster's owner; panics with its output if it fails.
fn pg(bin: &Path, program: &str, args: &[&str]) {
    let path = bin.join(program);
    let mut command = if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(&path);
        command
    } else {
        Command::new(&path)
    };
    let output = command
        .args(args)
        .current_dir("/")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|error| panic!("cannot run {}: {error}", path.display()));
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn pg_bin() -> PathBuf {
    if let Ok(bin) = std::env::var("FM_PG_BIN") {
        return PathBuf::from(bin);
    }
    let preferred = PathBuf::from("/usr/lib/postgresql/15/bin");
    if preferred.join("pg_ctl").exists() {
        return preferred;
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is installed (compose/test installs it)")
        .filter_map(|entry| entry.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("pg_ctl").exists())
        .collect();
    found.sort();
    found.pop().expect("a PostgreSQL with pg_ctl")
}

/// A throw-away PostgreSQL cluster with a superuser `fm` (no password, loopback only).
#[derive(Debug)]
pub struct PrivatePostgres {
    dir: PathBuf,
    bin: PathBuf,
    pub port: u16,
}

impl PrivatePostgres {
    /// initdb and start on a free port.
    pub fn start() -> Self {
        let bin = pg_bin();
        // Short: the Unix socket lives inside it (at most 107 bytes).
        let dir = std::env::temp_dir().join(format!(
            "fm-pg-{}",
            &Uuid::new_v4().simple().to_string()[..12]
        ));
        std::fs::create_dir_all(&dir).unwrap();
        if is_root() {
            let status = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(&dir)
                .status()
                .unwrap();
            assert!(status.success());
        }
        let data = dir.join("data");
        pg(
            &bin,
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "fm",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
            ],
        );
        let postgres = Self {
            dir,
            bin,
            port: free_port(),
        };
        postgres.start_again();
        postgres
    }

    /// The URL of database `name` as `fm`.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://fm@127.0.0.1:{}/{name}", self.port)
    }

    /// `pg_ctl stop -m fast`: every connection is cut, as in an outage.
    pub fn stop(&self) {
        pg(
            &self.bin,
            "pg_ctl",
            &["stop", "-D", self.data().as_str(), "-m", "fast", "-w"],
        );
        assert!(!listening(self.port), "PostgreSQL still listens");
    }

    /// Starts the stopped cluster again on the same port.
    pub fn start_again(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("postgres.log");
        pg(
            &self.bin,
            "pg_ctl",
            &[
                "start",
                "-D",
                self.data().as_str(),
                "-o",
                &options,
                "-l",
                log.to_str().unwrap(),
                "-w",
                "-t",
                "60",
            ],
        );
        let port = self.port;
        wait_until("PostgreSQL listens", Duration::from_secs(30), || {
            listening(port)
        });
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        // Best effort: it may be stopped already.
        let _ = std::panic::catch_unwind(|| {
            pg(
                &self.bin,
                "pg_ctl",
                &["stop", "-D", self.data().as_str(), "-m", "immediate", "-w"],
            );
        });
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A throw-away Apache Kafka node (broker and controller) with durable storage, so that a restart
/// keeps the log. Started through `compose/kafka/broker`, as every other Kafka of the project.
#[derive(Debug)]
pub struct PrivateBroker {
    dir: PathBuf,
    child: Option<Child>,
    pub port: u16,
    controller_port: u16,
}

/// What Kafka logs once a node serves clients; counted to tell this start from an earlier one.
const KAFKA_STARTED: &str = "Kafka Server started";

fn broker_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../compose/kafka/broker")
}

impl PrivateBroker {
    pub fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("fm-kafka-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut broker = Self {
            dir,
            child: None,
            port: free_port(),
            controller_port: free_port(),
        };
        broker.start_again();
        broker
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The broker's files: its log segments, indexes and metadata, every byte it keeps.
    pub fn data_dir(&self) -> &Path {
        &self.dir
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("kafka.log")
    }

    fn starts_logged(&self) -> usize {
        std::fs::read_to_string(self.log_path()).map_or(0, |log| log.matches(KAFKA_STARTED).count())
    }

    /// Stops the broker with SIGTERM (Kafka's controlled shutdown) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let status = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()
                .unwrap();
            assert!(status.success());
            let deadline = Instant::now() + Duration::from_mins(1);
            while child.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    child.kill().unwrap();
                    child.wait().unwrap();
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let port = self.port;
        wait_until("the broker's port closes", Duration::from_secs(10), || {
            !listening(port)
        });
    }

    /// Stalls the broker (SIGSTOP): its connections stay open and nothing answers, as a broker
    /// in a long GC pause or on a frozen host; [`Self::resume`] lets it go on.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused broker go on (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("the broker is running");
        let status = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal} {}", child.id());
    }

    /// Stops the broker, deletes its data (the log and its cluster id) and starts a new, empty
    /// cluster on the same ports.
    pub fn purge(&mut self) {
        self.stop();
        std::fs::remove_dir_all(self.dir.join("node")).unwrap();
        self.start_again();
    }

    /// Starts the broker (again) on the same ports and storage; returns once it serves clients.
    pub fn start_again(&mut self) {
        let before = self.starts_logged();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let child = Command::new(broker_script())
            .arg("run")
            .arg("--data")
            .arg(self.dir.join("node"))
            .args(["--port", &self.port.to_string()])
            .args(["--controller-port", &self.controller_port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("compose/kafka/broker runs (compose/test installs Apache Kafka)");
        self.child = Some(child);
        let port = self.port;
        wait_until("the broker serves clients", Duration::from_secs(90), || {
            self.starts_logged() > before && listening(port)
        });
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
