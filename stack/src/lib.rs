//! The one description of the local stack's services (docs/local-stack.md, "One description of
//! the stack"): which services exist, their binaries, the order they start in, how they say
//! they are ready (`GET /ready`), and above all **the environment each one gets from the stack's
//! shared facts** ([`Facts`]: the database, the brokers, the topics, how tokens are checked, the
//! privacy master keys, the SMTP sink, the gateway, ...). [`env`] turns facts into a service's
//! `FM_*` variables; [`process`] starts a service binary with them and waits until it is ready;
//! [`prepare`] creates the topics and runs the read-model migrations.
//!
//! The scripts (`compose/up`, `compose/fuzz`) reach it through the `fm-stack` binary
//! (`fm-stack env <service>`, `fm-stack prepare`); the benchmarks and the system tests through
//! this library. It depends on no service crate: it only knows their settings by name and spawns
//! their binaries.
//!
//! To add a setting that services need: a [`Setting`] variant (its keys and the services that
//! use it, in [`Setting::used_by`]), a field of [`Facts`], and its lines in [`env`]. The unit
//! tests fail until all three agree.

use std::{collections::BTreeMap, path::PathBuf};

pub mod prepare;
pub mod process;

/// A service's environment: `FM_*` key to value, in key order.
pub type Env = BTreeMap<String, String>;

/// A process of the stack that [`env`] describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    /// The payment provider's stand-in (docs/payments.md).
    GatewaySimulator,
    /// Projects the event log into the read models; owns their migrations.
    ProjectionService,
    /// Takes the commands and writes the events.
    CommandService,
    /// Answers the reads from the read models.
    QueryApi,
    /// Drives each booking's saga (payment, mail) through the command-service.
    SagaRunner,
    /// The operator's tool (no HTTP server): topics, events, sagas, tokens.
    Fmctl,
}

impl Service {
    /// Every server of the stack, in the order they start: the simulator and the projector
    /// before the command-service, the saga runner (which calls the command-service) last.
    pub const SERVERS: [Self; 5] = [
        Self::GatewaySimulator,
        Self::ProjectionService,
        Self::CommandService,
        Self::QueryApi,
        Self::SagaRunner,
    ];

    /// Everything [`env`] describes.
    pub const ALL: [Self; 6] = [
        Self::GatewaySimulator,
        Self::ProjectionService,
        Self::CommandService,
        Self::QueryApi,
        Self::SagaRunner,
        Self::Fmctl,
    ];

    /// Its name: the workspace member, the binary, the log file and the pid file.
    pub fn name(self) -> &'static str {
        match self {
            Self::GatewaySimulator => "gateway-simulator",
            Self::ProjectionService => "projection-service",
            Self::CommandService => "command-service",
            Self::QueryApi => "query-api",
            Self::SagaRunner => "saga-runner",
            Self::Fmctl => "fmctl",
        }
    }

    /// The service called `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|service| service.name() == name)
    }

    /// Whether it serves HTTP (and so has a port and answers `GET /ready`).
    pub fn is_server(self) -> bool {
        self != Self::Fmctl
    }

    /// The name of instance `instance` (the soak's `command-service-1`), or of the only one.
    pub fn instance_name(self, instance: Option<u32>) -> String {
        match instance {
            Some(n) => format!("{}-{n}", self.name()),
            None => self.name().to_owned(),
        }
    }

    /// The confidential client it has at the local identity provider
    /// (compose/keycloak/realm.json; local secrets, published with the repository), if any.
    pub fn local_client(self) -> Option<(&'static str, &'static str)> {
        match self {
            Self::SagaRunner => Some(SAGA_RUNNER_CLIENT),
            Self::Fmctl => Some(FMCTL_CLIENT),
            _ => None,
        }
    }
}

impl std::fmt::Display for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The local realm's confidential client of the saga runner: its `system` tokens.
pub const SAGA_RUNNER_CLIENT: (&str, &str) = ("fm-saga-runner", "local-saga-runner-secret");

/// The local realm's confidential client of fmctl (role `ops`).
pub const FMCTL_CLIENT: (&str, &str) = ("fm-fmctl", "local-fmctl-secret");

/// How the services check bearer tokens (docs/identity.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// They trust the OpenID Connect provider at this issuer (`FM_AUTH__ISSUER`); a service
    /// with a [`Service::local_client`] also gets its client's credentials.
    Provider { issuer: String },
    /// They check tokens with a shared HMAC secret (`FM_AUTH__SECRET`; the offline, test-only
    /// path).
    Secret(String),
}

/// What the stack's processes share: where everything is and how it is set. `None` (or the
/// default) leaves the service's own default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    /// The read models' (and the sagas', and by default the data keys') database.
    pub database_url: Option<String>,
    /// Bootstrap servers.
    pub brokers: Option<String>,
    /// The event topics' prefix.
    pub topic_prefix: Option<String>,
    /// The event topics' partition count (`fmctl topics ensure` creates them so; a service
    /// refuses a topic with another count).
    pub partitions: Option<u32>,
    /// How tokens are checked.
    pub auth: Option<Auth>,
    /// The master keys that wrap the bookings' data keys (docs/privacy.md).
    pub master_keys: Option<String>,
    /// Where the data keys live when not in `database_url`.
    pub key_database_url: Option<String>,
    /// The SMTP server the saga runner sends the families' mail to (and the command-service the
    /// invitation letters, docs/identity.md).
    pub smtp: Option<(String, u16)>,
    /// The payment gateway's base URL.
    pub gateway_url: Option<String>,
    /// The command-service the saga runner sends its commands to (and whose family-session
    /// keys the query-api trusts, `FM_FAMILY_SESSIONS__JWKS_URL`).
    pub command_url: Option<String>,
    /// The command-service's snapshot file.
    pub snapshot: Option<PathBuf>,
    /// The limits on the flow (docs/security.md): `false` lifts them (tests, fuzzing, soak and
    /// benchmarks drive many requests with a few tokens from one address).
    pub limits: bool,
    /// `FM_LOG__FORMAT` (`json` in every stack we start; `pretty` for one-shot commands).
    pub log_format: Option<String>,
    /// `FM_LOG__FILTER`.
    pub log_filter: Option<String>,
}

impl Default for Facts {
    fn default() -> Self {
        Self {
            database_url: None,
            brokers: None,
            topic_prefix: None,
            partitions: None,
            auth: None,
            master_keys: None,
            key_database_url: None,
            smtp: None,
            gateway_url: None,
            command_url: None,
            snapshot: None,
            limits: true,
            log_format: Some("json".to_owned()),
            log_filter: None,
        }
    }
}

/// One kind of setting the stack hands to its services, and who uses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    Http,
    Log,
    Database,
    Kafka,
    Auth,
    Privacy,
    Limits,
    Snapshot,
    Smtp,
    Gateway,
    SagaCommandUrl,
    FamilySessions,
}

impl Setting {
    /// Every setting.
    pub const ALL: [Self; 12] = [
        Self::Http,
        Self::Log,
        Self::Database,
        Self::Kafka,
        Self::Auth,
        Self::Privacy,
        Self::Limits,
        Self::Snapshot,
        Self::Smtp,
        Self::Gateway,
        Self::SagaCommandUrl,
        Self::FamilySessions,
    ];

    /// Whether `service` reads this setting (its `Settings` has the section).
    pub fn used_by(self, service: Service) -> bool {
        use Service::{
            CommandService, Fmctl, GatewaySimulator, ProjectionService, QueryApi, SagaRunner,
        };
        match self {
            Self::Http => service.is_server(),
            Self::Log => true,
            Self::Database | Self::Kafka => service != GatewaySimulator,
            Self::Auth => matches!(service, CommandService | QueryApi | SagaRunner | Fmctl),
            Self::Privacy => matches!(
                service,
                CommandService | ProjectionService | SagaRunner | Fmctl
            ),
            Self::Limits => matches!(service, CommandService | QueryApi),
            Self::Snapshot => service == CommandService,
            Self::Smtp => matches!(service, SagaRunner | CommandService),
            Self::Gateway | Self::SagaCommandUrl => service == SagaRunner,
            Self::FamilySessions => service == QueryApi,
        }
    }
}

/// One process to describe: a service, its instance number (several replicas) and its port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Instance {
    pub service: Service,
    /// `Some(n)` for one of several replicas.
    pub index: Option<u32>,
    /// Its HTTP port (0: the system picks one; the service logs it).
    pub port: u16,
}

impl Instance {
    /// The only instance of `service`, on `port`.
    pub fn new(service: Service, port: u16) -> Self {
        Self {
            service,
            index: None,
            port,
        }
    }

    /// Its name (`command-service-2`): its log and pid file.
    pub fn name(&self) -> String {
        self.service.instance_name(self.index)
    }
}

/// The limits on the flow that [`Facts::limits`] `false` lifts.
pub const LIMIT_KEYS: [&str; 3] = [
    "FM_LIMITS__MAX_OPEN_BOOKINGS_PER_FAMILY",
    "FM_LIMITS__PER_SUBJECT_PER_MINUTE",
    "FM_LIMITS__PER_ADDRESS_PER_MINUTE",
];

/// The environment of `instance` on a stack with `facts`: every `FM_*` variable it gets from
/// the stack, nothing of the caller's.
pub fn env(facts: &Facts, instance: &Instance) -> Env {
    let service = instance.service;
    let mut env = Env::new();
    let mut set = |key: &str, value: &str| {
        env.insert(key.to_owned(), value.to_owned());
    };
    for setting in Setting::ALL {
        if !setting.used_by(service) {
            continue;
        }
        match setting {
            Setting::Http => {
                set("FM_HTTP__HOST", "127.0.0.1");
                set("FM_HTTP__PORT", &instance.port.to_string());
            }
            Setting::Log => {
                if let Some(format) = &facts.log_format {
                    set("FM_LOG__FORMAT", format);
                }
                if let Some(filter) = &facts.log_filter {
                    set("FM_LOG__FILTER", filter);
                }
            }
            Setting::Database => {
                if let Some(url) = &facts.database_url {
                    set("FM_DATABASE__URL", url);
                }
            }
            Setting::Kafka => {
                if let Some(brokers) = &facts.brokers {
                    set("FM_KAFKA__BROKERS", brokers);
                }
                if let Some(prefix) = &facts.topic_prefix {
                    set("FM_KAFKA__TOPIC_PREFIX", prefix);
                }
                if let Some(partitions) = facts.partitions {
                    set("FM_KAFKA__PARTITIONS", &partitions.to_string());
                }
            }
            Setting::Auth => match &facts.auth {
                Some(Auth::Provider { issuer }) => {
                    set("FM_AUTH__ISSUER", issuer);
                    if let Some((id, secret)) = service.local_client() {
                        set("FM_AUTH__CLIENT_ID", id);
                        set("FM_AUTH__CLIENT_SECRET", secret);
                    }
                }
                Some(Auth::Secret(secret)) => set("FM_AUTH__SECRET", secret),
                None => {}
            },
            Setting::Privacy => {
                if let Some(keys) = &facts.master_keys {
                    set("FM_PRIVACY__MASTER_KEYS", keys);
                }
                if let Some(url) = &facts.key_database_url {
                    set("FM_PRIVACY__DATABASE_URL", url);
                }
            }
            Setting::Limits => {
                if !facts.limits {
                    for key in LIMIT_KEYS {
                        set(key, "0");
                    }
                }
            }
            Setting::Snapshot => {
                if let Some(path) = &facts.snapshot {
                    set("FM_COMMANDS__SNAPSHOT_PATH", &path.display().to_string());
                }
            }
            Setting::Smtp => {
                if let Some((host, port)) = &facts.smtp {
                    set("FM_SMTP__HOST", host);
                    set("FM_SMTP__PORT", &port.to_string());
                }
            }
            Setting::Gateway => {
                if let Some(url) = &facts.gateway_url {
                    set("FM_GATEWAY__BASE_URL", url);
                }
            }
            Setting::SagaCommandUrl => {
                if let Some(url) = &facts.command_url {
                    set("FM_SAGA__COMMAND_URL", url);
                }
            }
            Setting::FamilySessions => {
                if let Some(url) = &facts.command_url {
                    set(
                        "FM_FAMILY_SESSIONS__JWKS_URL",
                        &format!("{}/family-sessions/jwks.json", url.trim_end_matches('/')),
                    );
                }
            }
        }
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Facts with every field set, so that every setting has something to say.
    fn full() -> Facts {
        Facts {
            database_url: Some("postgres://fm:fm@127.0.0.1:5432/funeral_manager".to_owned()),
            brokers: Some("127.0.0.1:9092".to_owned()),
            topic_prefix: Some("fm".to_owned()),
            partitions: Some(6),
            auth: Some(Auth::Provider {
                issuer: "http://127.0.0.1:8180/realms/funeral-manager".to_owned(),
            }),
            master_keys: Some("local-1:a2V5".to_owned()),
            key_database_url: Some("postgres://fm:fm@127.0.0.1:5432/keys".to_owned()),
            smtp: Some(("127.0.0.1".to_owned(), 2525)),
            gateway_url: Some("http://127.0.0.1:8090".to_owned()),
            command_url: Some("http://127.0.0.1:8081".to_owned()),
            snapshot: Some(PathBuf::from("/tmp/snapshot.json")),
            limits: false,
            log_format: Some("json".to_owned()),
            log_filter: Some("info".to_owned()),
        }
    }

    /// The variables each setting gives a service that uses it, with [`full`] facts.
    fn keys_of(setting: Setting, service: Service) -> Vec<&'static str> {
        match setting {
            Setting::Http => vec!["FM_HTTP__HOST", "FM_HTTP__PORT"],
            Setting::Log => vec!["FM_LOG__FORMAT", "FM_LOG__FILTER"],
            Setting::Database => vec!["FM_DATABASE__URL"],
            Setting::Kafka => vec![
                "FM_KAFKA__BROKERS",
                "FM_KAFKA__TOPIC_PREFIX",
                "FM_KAFKA__PARTITIONS",
            ],
            Setting::Auth if service.local_client().is_some() => vec![
                "FM_AUTH__ISSUER",
                "FM_AUTH__CLIENT_ID",
                "FM_AUTH__CLIENT_SECRET",
            ],
            Setting::Auth => vec!["FM_AUTH__ISSUER"],
            Setting::Privacy => vec!["FM_PRIVACY__MASTER_KEYS", "FM_PRIVACY__DATABASE_URL"],
            Setting::Limits => LIMIT_KEYS.to_vec(),
            Setting::Snapshot => vec!["FM_COMMANDS__SNAPSHOT_PATH"],
            Setting::Smtp => vec!["FM_SMTP__HOST", "FM_SMTP__PORT"],
            Setting::Gateway => vec!["FM_GATEWAY__BASE_URL"],
            Setting::SagaCommandUrl => vec!["FM_SAGA__COMMAND_URL"],
            Setting::FamilySessions => vec!["FM_FAMILY_SESSIONS__JWKS_URL"],
        }
    }

    #[test]
    fn every_service_gets_every_setting_it_uses_and_nothing_else() {
        let facts = full();
        for service in Service::ALL {
            let env = env(&facts, &Instance::new(service, 8081));
            let mut expected: Vec<&str> = Setting::ALL
                .into_iter()
                .filter(|setting| setting.used_by(service))
                .flat_map(|setting| keys_of(setting, service))
                .collect();
            expected.sort_unstable();
            let got: Vec<&str> = env.keys().map(String::as_str).collect();
            assert_eq!(got, expected, "{service}");
        }
    }

    /// What each service reads, written out once more by hand from its `Settings` struct: a
    /// setting added to a service's settings but not here, or dropped from [`Setting::used_by`],
    /// fails this test.
    #[test]
    fn the_settings_each_service_reads() {
        use Setting::*;
        let table: [(Service, &[Setting]); 6] = [
            (Service::GatewaySimulator, &[Http, Log]),
            (
                Service::ProjectionService,
                &[Http, Log, Database, Kafka, Privacy],
            ),
            (
                Service::CommandService,
                &[
                    Http, Log, Database, Kafka, Auth, Privacy, Limits, Snapshot, Smtp,
                ],
            ),
            (
                Service::QueryApi,
                &[Http, Log, Database, Kafka, Auth, Limits, FamilySessions],
            ),
            (
                Service::SagaRunner,
                &[
                    Http,
                    Log,
                    Database,
                    Kafka,
                    Auth,
                    Privacy,
                    Smtp,
                    Gateway,
                    SagaCommandUrl,
                ],
            ),
            (Service::Fmctl, &[Log, Database, Kafka, Auth, Privacy]),
        ];
        for (service, uses) in table {
            for setting in Setting::ALL {
                assert_eq!(
                    setting.used_by(service),
                    uses.contains(&setting),
                    "{service} and {setting:?}"
                );
            }
        }
    }

    #[test]
    fn the_master_keys_reach_every_service_that_opens_a_box() {
        let facts = full();
        for service in [
            Service::CommandService,
            Service::ProjectionService,
            Service::SagaRunner,
            Service::Fmctl,
        ] {
            let env = env(&facts, &Instance::new(service, 1));
            assert_eq!(
                env.get("FM_PRIVACY__MASTER_KEYS").map(String::as_str),
                Some("local-1:a2V5"),
                "{service}"
            );
        }
    }

    #[test]
    fn a_secret_replaces_the_issuer_and_the_clients() {
        let facts = Facts {
            auth: Some(Auth::Secret("s3cret".to_owned())),
            ..full()
        };
        let env = env(&facts, &Instance::new(Service::SagaRunner, 8084));
        assert_eq!(env["FM_AUTH__SECRET"], "s3cret");
        assert!(!env.contains_key("FM_AUTH__ISSUER"));
        assert!(!env.contains_key("FM_AUTH__CLIENT_ID"));
    }

    #[test]
    fn limits_stay_on_unless_lifted() {
        let facts = Facts {
            limits: true,
            ..full()
        };
        let env = env(&facts, &Instance::new(Service::CommandService, 8081));
        assert!(LIMIT_KEYS.iter().all(|key| !env.contains_key(*key)));
        let lifted = super::env(&full(), &Instance::new(Service::QueryApi, 8082));
        assert!(LIMIT_KEYS.iter().all(|key| lifted[*key] == "0"));
    }

    #[test]
    fn missing_facts_leave_the_services_defaults() {
        let env = env(&Facts::default(), &Instance::new(Service::SagaRunner, 8084));
        let keys: Vec<&str> = env.keys().map(String::as_str).collect();
        assert_eq!(keys, ["FM_HTTP__HOST", "FM_HTTP__PORT", "FM_LOG__FORMAT"]);
        assert_eq!(env["FM_HTTP__PORT"], "8084");
    }

    #[test]
    fn names_round_trip() {
        for service in Service::ALL {
            assert_eq!(Service::from_name(service.name()), Some(service));
        }
        assert_eq!(Service::from_name("kafka"), None);
        assert_eq!(
            Service::CommandService.instance_name(Some(2)),
            "command-service-2"
        );
    }
}
