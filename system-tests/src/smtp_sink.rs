//! [`SmtpSink`]: a real SMTP server for one test. It runs `compose/smtp-sink.py` (aiosmtpd, the
//! same sink `compose/up` runs on 2525) on a port the system picks, writing to a Maildir of its
//! own, and reads the letters back from there.
//!
//! Parallel tests each get their own sink: the sink binds port 0 and prints the port it got,
//! so two tests never race for one. The sink exits when the test process dies (even by
//! SIGKILL), and is killed when the `SmtpSink` is dropped.
//!
//! The sink refuses recipients whose local part starts with `reject-` (550) and defers those
//! starting with `defer-` (451), so tests can see a real server say no.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{Context, bail};
use mail_parser::MessageParser;
use notifications::SmtpSettings;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, ChildStdout, Command},
};
use uuid::Uuid;

/// The sink script, in the repository.
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../compose/smtp-sink.py");

/// Interpreters tried in order, after `FM_SMTP_SINK_PYTHON`. Debian's python3-aiosmtpd installs
/// for `/usr/bin/python3`, which a pyenv or venv `python3` earlier on `PATH` cannot import.
const PYTHONS: [&str; 2] = ["/usr/bin/python3", "python3"];

/// One letter the sink accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMail {
    /// The `Message-ID` header, with its angle brackets (as `notifications::message_id` gives it).
    pub message_id: String,
    /// The addresses on the `To:` header.
    pub to: Vec<String>,
    /// The envelope recipients (`RCPT TO`), as the sink recorded them.
    pub envelope_to: Vec<String>,
    /// The `From:` address.
    pub from: String,
    pub subject: String,
    /// The plain-text body, decoded, with `\n` line ends.
    pub body: String,
}

/// A running sink; killed on drop, its Maildir deleted.
#[derive(Debug)]
pub struct SmtpSink {
    port: u16,
    dir: PathBuf,
    maildir: PathBuf,
    child: Child,
    // Held so the sink never writes to a closed pipe.
    _stdout: BufReader<ChildStdout>,
}

impl SmtpSink {
    /// Starts a sink on a free port with an empty Maildir and waits until it accepts
    /// connections. Fails with a sentence saying what to install when aiosmtpd is missing.
    pub async fn start() -> anyhow::Result<Self> {
        let python = find_python().await?;
        let dir = std::env::temp_dir().join(format!("fm-smtp-sink-{}", Uuid::new_v4().simple()));
        let maildir = dir.join("mail");
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("Failed to create {}", dir.display()))?;
        let log_path = dir.join("sink.log");
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("Failed to create {}", log_path.display()))?;
        let mut child = Command::new(&python)
            .arg(SCRIPT)
            .arg("--maildir")
            .arg(&maildir)
            .args(["--host", "127.0.0.1", "--port", "0", "--exit-with-parent"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("Failed to run {python} {SCRIPT}"))?;
        let stdout = child.stdout.take().context("the sink's stdout is piped")?;
        let mut stdout = BufReader::new(stdout);
        let mut line = String::new();
        let read = tokio::time::timeout(Duration::from_secs(15), stdout.read_line(&mut line)).await;
        let port = match read {
            Ok(Ok(n)) if n > 0 => parse_port(&line)
                .with_context(|| format!("unexpected first line from the sink: {line:?}"))?,
            _ => {
                let _ = child.start_kill();
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                let _ = std::fs::remove_dir_all(&dir);
                bail!("the SMTP sink did not start within 15 s; its output:\n{log}");
            }
        };
        Ok(Self {
            port,
            dir,
            maildir,
            child,
            _stdout: stdout,
        })
    }

    /// The port it listens on (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Mailer settings that deliver to this sink (plain SMTP, a 5 s timeout).
    pub fn settings(&self) -> SmtpSettings {
        SmtpSettings {
            timeout: Duration::from_secs(5),
            ..SmtpSettings::local(self.port)
        }
    }

    /// The Maildir the sink writes (`new/` holds one file per letter).
    pub fn maildir(&self) -> &Path {
        &self.maildir
    }

    /// Every letter accepted so far, in order of arrival. Panics if a stored letter cannot be
    /// read or parsed: that is a broken sink, and the test should stop there.
    pub fn messages(&self) -> Vec<ReceivedMail> {
        let mut files = Vec::new();
        for sub in ["new", "cur"] {
            let entries = match std::fs::read_dir(self.maildir.join(sub)) {
                Ok(entries) => entries,
                // The Maildir is created with the first letter.
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
                Err(error) => panic!("cannot list {}: {error}", self.maildir.join(sub).display()),
            };
            for entry in entries {
                let entry = entry.expect("a readable Maildir entry");
                files.push(entry.path());
            }
        }
        files.sort_by_key(|path| arrival_key(path));
        files
            .iter()
            .map(|path| {
                let raw = std::fs::read(path)
                    .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
                parse_mail(&raw).unwrap_or_else(|error| panic!("{}: {error:#}", path.display()))
            })
            .collect()
    }

    /// Waits until at least `count` letters have arrived and returns all of them; fails after
    /// `timeout`, saying how many came. (Checking that no more arrive is the test's business.)
    pub async fn wait_for(
        &self,
        count: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<ReceivedMail>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let messages = self.messages();
            if messages.len() >= count {
                return Ok(messages);
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "{} of {count} letters arrived within {timeout:?}; subjects: {:?}",
                    messages.len(),
                    messages.iter().map(|m| &m.subject).collect::<Vec<_>>()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The first interpreter that can import aiosmtpd.
async fn find_python() -> anyhow::Result<String> {
    let candidates = std::env::var("FM_SMTP_SINK_PYTHON")
        .into_iter()
        .chain(PYTHONS.iter().map(|p| (*p).to_owned()));
    for python in candidates {
        let imports = Command::new(&python)
            .args(["-c", "import aiosmtpd"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .is_ok_and(|status| status.success());
        if imports {
            return Ok(python);
        }
    }
    bail!(
        "no Python with aiosmtpd found (tried $FM_SMTP_SINK_PYTHON, {}): install Debian's \
         python3-aiosmtpd (compose/test does it, see install_smtp_sink in compose/lib.sh)",
        PYTHONS.join(", ")
    )
}

/// The port in "smtp-sink listening on 127.0.0.1:PORT, maildir ...".
fn parse_port(line: &str) -> Option<u16> {
    let rest = line.strip_prefix("smtp-sink listening on ")?;
    let address = rest.split(',').next()?;
    address.rsplit_once(':')?.1.trim().parse().ok()
}

/// Python's Maildir names start "SECONDS.M<microseconds>P<pid>Q<counter>.": sort on the numbers
/// (the microseconds are not zero-padded, so the names do not sort as text).
fn arrival_key(path: &Path) -> (u64, u64, u64, String) {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut parts = name.splitn(3, '.');
    let seconds = parts
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(u64::MAX);
    let unique = parts.next().unwrap_or_default();
    let number_after = |tag: char| {
        unique
            .split_once(tag)
            .map(|(_, rest)| {
                rest.chars()
                    .take_while(char::is_ascii_digit)
                    .collect::<String>()
            })
            .and_then(|digits| digits.parse().ok())
            .unwrap_or(u64::MAX)
    };
    (seconds, number_after('M'), number_after('Q'), name)
}

fn parse_mail(raw: &[u8]) -> anyhow::Result<ReceivedMail> {
    let message = MessageParser::default()
        .parse(raw)
        .context("not a parsable message")?;
    let addresses = |address: Option<&mail_parser::Address<'_>>| -> Vec<String> {
        address
            .map(|address| {
                address
                    .iter()
                    .filter_map(|addr| addr.address().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    Ok(ReceivedMail {
        message_id: message
            .message_id()
            .map(|id| format!("<{id}>"))
            .context("no Message-ID")?,
        to: addresses(message.to()),
        envelope_to: message
            .header_raw("X-RcptTo")
            .map(|raw| raw.split(',').map(|a| a.trim().to_owned()).collect())
            .unwrap_or_default(),
        from: addresses(message.from())
            .into_iter()
            .next()
            .unwrap_or_default(),
        subject: message.subject().unwrap_or_default().to_owned(),
        body: message
            .body_text(0)
            .map(|body| body.replace("\r\n", "\n"))
            .unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_port_from_the_first_line() {
        assert_eq!(
            parse_port("smtp-sink listening on 127.0.0.1:40123, maildir /tmp/x\n"),
            Some(40123)
        );
        assert_eq!(parse_port("Traceback (most recent call last):"), None);
    }

    #[test]
    fn maildir_names_sort_by_time_then_microseconds() {
        let mut names = [
            "1795617477.M166585P14489Q2.vm",
            "1795617477.M99P14489Q1.vm",
            "1795617476.M900000P14489Q9.vm",
        ]
        .map(PathBuf::from);
        names.sort_by_key(|path| arrival_key(path));
        assert_eq!(
            names.map(|p| p.to_string_lossy().into_owned()),
            [
                "1795617476.M900000P14489Q9.vm",
                "1795617477.M99P14489Q1.vm",
                "1795617477.M166585P14489Q2.vm",
            ]
        );
    }
}
