//! Where the SMTP server is and how to talk to it (`FM_SMTP__*` in the saga's settings).

use std::time::Duration;

use secrecy::SecretString;
use serde::{Deserialize, Deserializer};

/// How the connection to the SMTP server is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SmtpTls {
    /// Plain SMTP: the local sink on 127.0.0.1, never a server across a network.
    #[default]
    None,
    /// Plain connection upgraded with STARTTLS, which is required (usually port 587).
    #[serde(rename = "starttls")]
    StartTls,
    /// TLS from the first byte (SMTPS, usually port 465).
    Tls,
}

/// The SMTP server the mailer hands letters to. Defaults fit the local sink of `compose/up`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct SmtpSettings {
    /// Host name (checked against the certificate with TLS) or IP address.
    pub host: String,
    pub port: u16,
    /// The `From:` of every letter, e.g. `Funeral Manager <bookings@funeral-manager.local>`.
    pub from: String,
    /// One attempt (connect, greeting, envelope, data) gives up after this long; milliseconds
    /// in configuration.
    #[serde(deserialize_with = "millis")]
    pub timeout: Duration,
    /// Credentials for SMTP AUTH; used only when both are set.
    pub username: Option<SecretString>,
    pub password: Option<SecretString>,
    pub tls: SmtpTls,
}

impl Default for SmtpSettings {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".to_owned(),
            port: 2525,
            from: "Funeral Manager <bookings@funeral-manager.local>".to_owned(),
            timeout: Duration::from_secs(10),
            username: None,
            password: None,
            tls: SmtpTls::None,
        }
    }
}

impl SmtpSettings {
    /// The defaults, pointed at `127.0.0.1:port` (a test's own sink).
    pub fn local(port: u16) -> Self {
        Self {
            port,
            ..Self::default()
        }
    }
}

fn millis<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    u64::deserialize(deserializer).map(Duration::from_millis)
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    #[test]
    fn defaults_point_at_the_local_sink() {
        let settings: SmtpSettings = serde_json::from_str("{}").unwrap();
        assert_eq!(settings.host, "127.0.0.1");
        assert_eq!(settings.port, 2525);
        assert_eq!(settings.timeout, Duration::from_secs(10));
        assert_eq!(settings.tls, SmtpTls::None);
        assert!(settings.username.is_none() && settings.password.is_none());
    }

    #[test]
    fn timeout_is_in_millis_and_secrets_stay_out_of_debug() {
        let settings: SmtpSettings = serde_json::from_str(
            r#"{"host": "smtp.example.org", "port": 587, "timeout": 2500, "tls": "starttls",
                "username": "bookings", "password": "hunter2-very-secret"}"#,
        )
        .unwrap();
        assert_eq!(settings.timeout, Duration::from_millis(2500));
        assert_eq!(settings.tls, SmtpTls::StartTls);
        assert_eq!(
            settings.password.as_ref().unwrap().expose_secret(),
            "hunter2-very-secret"
        );
        let debug = format!("{settings:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(
            serde_json::from_str::<SmtpSettings>(r#"{"tls": "ssl"}"#).is_err(),
            "unknown TLS modes are refused"
        );
    }
}
