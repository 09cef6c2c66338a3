//! Topic names, the settings every topic of a deployment must have, and making the broker agree.
//!
//! The log is the system of record, so a topic's settings are part of the design, not a
//! deployment detail: records are never deleted (`retention.ms=-1`, `retention.bytes=-1`,
//! `cleanup.policy=delete`, never `compact`), an acknowledged write is on at least
//! `min.insync.replicas` brokers, a replica that fell out of sync never becomes leader
//! (`unclean.leader.election.enable=false`), and the partition count never changes (the key's
//! partition is an aggregate's home; `docs/consistency.md`). [`ensure_topics`] creates what is
//! missing and reports every way an existing topic differs ([`Drift`]); [`verify_partitions`]
//! is the check a service makes before it reads the event topics.

use std::{collections::BTreeMap, fmt};

use rdkafka::{
    ClientConfig,
    admin::{
        AdminClient, AdminOptions, AlterConfig, NewTopic, OwnedResourceSpecifier,
        ResourceSpecifier, TopicReplication,
    },
    client::DefaultClientContext,
    types::RDKafkaErrorCode,
};
use schemas::AggregateType;

use crate::{KafkaSettings, LogError};

/// The topic names of one deployment: `<prefix>.<aggregate>.events` and `<prefix>.dead-letter`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    prefix: String,
}

impl Topics {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// The topic holding the streams of one aggregate type.
    pub fn events(&self, aggregate: AggregateType) -> String {
        format!("{}.{}.events", self.prefix, aggregate.as_str())
    }

    /// The aggregate type whose events a topic holds, if it is one of ours.
    pub fn aggregate_of(&self, topic: &str) -> Option<AggregateType> {
        AggregateType::ALL
            .into_iter()
            .find(|aggregate| self.events(*aggregate) == topic)
    }

    /// Where records that cannot be decoded or applied go, with the reason in a header.
    pub fn dead_letter(&self) -> String {
        format!("{}.dead-letter", self.prefix)
    }

    /// Every event topic, in a stable order.
    pub fn event_topics(&self) -> Vec<String> {
        AggregateType::ALL
            .into_iter()
            .map(|aggregate| self.events(aggregate))
            .collect()
    }

    /// Every topic this deployment owns.
    pub fn all(&self) -> Vec<String> {
        let mut topics = self.event_topics();
        topics.push(self.dead_letter());
        topics
    }
}

/// How long [`ensure_topics`] waits for every partition of the deployment's topics to have a
/// leader. A new topic's leaders take a moment, seconds when the machine is busy; a topic still
/// without a leader after this long has a cluster problem worth an error.
const TOPICS_READY_TIMEOUT: std::time::Duration = std::time::Duration::from_mins(1);

/// What every topic of the deployment must look like on a cluster of a given size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPolicy {
    pub partitions: i32,
    pub replication_factor: i32,
    pub min_insync_replicas: i32,
}

/// The topic-level settings that keep every record forever, as `(name, value)`.
const FOREVER: [(&str, &str); 4] = [
    ("retention.ms", "-1"),
    ("retention.bytes", "-1"),
    ("cleanup.policy", "delete"),
    ("unclean.leader.election.enable", "false"),
];

impl TopicPolicy {
    /// The policy for a cluster of `brokers` brokers: the configured replication factor and
    /// minimum in-sync replicas where set, else three replicas (fewer on a smaller cluster) of
    /// which two must hold a write (one on a cluster of one or two brokers).
    pub fn for_cluster(settings: &KafkaSettings, brokers: usize) -> Self {
        let brokers = i32::try_from(brokers).unwrap_or(i32::MAX).max(1);
        let replication_factor = settings.replication_factor.unwrap_or(brokers.min(3));
        let min_insync_replicas = settings
            .min_insync_replicas
            .unwrap_or(if replication_factor >= 3 { 2 } else { 1 });
        Self {
            partitions: settings.partitions,
            replication_factor,
            min_insync_replicas,
        }
    }

    /// The topic-level settings this policy asks for, as the broker spells them.
    pub fn configs(&self) -> Vec<(&'static str, String)> {
        let mut configs: Vec<(&'static str, String)> = FOREVER
            .iter()
            .map(|(name, value)| (*name, (*value).to_owned()))
            .collect();
        configs.push(("min.insync.replicas", self.min_insync_replicas.to_string()));
        configs
    }
}

/// One way an existing topic differs from the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift {
    /// The setting: `partitions`, `replication.factor`, or a topic config name.
    pub setting: String,
    pub wanted: String,
    pub found: String,
}

impl Drift {
    /// Whether `fmctl topics ensure --repair` may change it in place. Partitions and replicas
    /// are never changed by a tool: another partition count moves aggregates to other
    /// partitions, and a reassignment is an operator's decision (docs/operations.md).
    pub fn repairable(&self) -> bool {
        self.setting != "partitions" && self.setting != "replication.factor"
    }
}

impl fmt::Display for Drift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} is {}, should be {}",
            self.setting, self.found, self.wanted
        )
    }
}

/// What [`ensure_topics`] found or did for one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicState {
    Created,
    /// Exists with every setting of the policy.
    Conforms,
    /// Exists, and differs from the policy in these ways (after any repair).
    Drifted(Vec<Drift>),
    /// Its configs were altered to the policy; partitions and replicas conform.
    Repaired(Vec<Drift>),
}

/// The outcome of [`ensure_topics`].
#[derive(Debug, Clone)]
pub struct TopicsReport {
    /// How many brokers the cluster reported.
    pub brokers: usize,
    pub policy: TopicPolicy,
    pub topics: Vec<(String, TopicState)>,
}

impl TopicsReport {
    /// Names of the topics this run created.
    pub fn created(&self) -> Vec<String> {
        self.topics
            .iter()
            .filter(|(_, state)| *state == TopicState::Created)
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Whether any topic still differs from the policy.
    pub fn drifted(&self) -> bool {
        self.topics
            .iter()
            .any(|(_, state)| matches!(state, TopicState::Drifted(_)))
    }
}

fn admin(settings: &KafkaSettings) -> Result<AdminClient<DefaultClientContext>, LogError> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", &settings.brokers)
        .set(
            "socket.timeout.ms",
            settings.request_timeout.as_millis().to_string(),
        )
        .create()?)
}

/// What the cluster says of its brokers and topics, as plain data.
#[derive(Debug, Default)]
struct ClusterView {
    brokers: usize,
    /// Per topic without error: its partition count and the fewest replicas of any partition.
    topics: BTreeMap<String, (i32, i32)>,
    /// The topics every partition of which has a leader (a new topic gets them a moment later).
    led: Vec<String>,
}

/// Fetches the cluster's metadata on a blocking thread (librdkafka's call blocks).
async fn cluster_view(settings: &KafkaSettings) -> Result<ClusterView, LogError> {
    let settings = settings.clone();
    tokio::task::spawn_blocking(move || {
        let admin = admin(&settings)?;
        let metadata = admin
            .inner()
            .fetch_metadata(None, settings.request_timeout)?;
        let listed = || {
            metadata
                .topics()
                .iter()
                .filter(|topic| topic.error().is_none() && !topic.partitions().is_empty())
        };
        let led = listed()
            .filter(|topic| {
                topic
                    .partitions()
                    .iter()
                    .all(|p| p.error().is_none() && p.leader() >= 0)
            })
            .map(|topic| topic.name().to_owned())
            .collect();
        let topics = listed()
            .map(|topic| {
                let count = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
                let replicas = topic
                    .partitions()
                    .iter()
                    .map(|p| count(p.replicas().len()))
                    .min()
                    .unwrap_or(0);
                (
                    topic.name().to_owned(),
                    (count(topic.partitions().len()), replicas),
                )
            })
            .collect();
        Ok(ClusterView {
            brokers: metadata.brokers().len(),
            topics,
            led,
        })
    })
    .await
    .unwrap_or_else(|join| Err(LogError::Blocking(join.to_string())))
}

/// Creates every topic of the deployment that does not exist yet, and compares every existing
/// one with the policy for this cluster. With `repair`, topic configs that differ are altered
/// to the policy (partitions and replicas never are). Safe to run repeatedly and from several
/// processes at once.
pub async fn ensure_topics(
    settings: &KafkaSettings,
    repair: bool,
) -> Result<TopicsReport, LogError> {
    let admin = admin(settings)?;
    let options = AdminOptions::new().operation_timeout(Some(settings.request_timeout));
    let brokers = cluster_view(settings).await?.brokers;
    let policy = TopicPolicy::for_cluster(settings, brokers);
    let names = Topics::new(&settings.topic_prefix).all();

    let configs = policy.configs();
    let new_topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|name| {
            configs.iter().fold(
                NewTopic::new(
                    name,
                    policy.partitions,
                    TopicReplication::Fixed(policy.replication_factor),
                ),
                |topic, (key, value)| topic.set(key, value),
            )
        })
        .collect();
    let mut states: BTreeMap<String, TopicState> = BTreeMap::new();
    for result in admin.create_topics(&new_topics, &options).await? {
        match result {
            Ok(name) => {
                states.insert(name, TopicState::Created);
            }
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                tracing::error!(topic = %name, %code, "topic creation failed");
                return Err(LogError::Kafka(rdkafka::error::KafkaError::AdminOp(code)));
            }
        }
    }

    // A created topic reaches every broker's metadata, and its partitions their leaders, a
    // moment later (seconds on a loaded machine): wait for every topic of the deployment to be
    // led, so that whoever ensured the topics can read and write them at once.
    let deadline = tokio::time::Instant::now() + TOPICS_READY_TIMEOUT;
    loop {
        let cluster = cluster_view(settings).await?;
        let unled: Vec<String> = names
            .iter()
            .filter(|name| !cluster.led.contains(name))
            .cloned()
            .collect();
        if unled.is_empty() {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(LogError::TopicsNotReady(unled));
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    let existing: Vec<&String> = names.iter().filter(|n| !states.contains_key(*n)).collect();
    if !existing.is_empty() {
        let cluster = cluster_view(settings).await?;
        let described = describe(&admin, &existing, &options).await?;
        for name in existing {
            let mut drifts = shape_drift(&cluster, name, &policy)?;
            let found = described.get(name.as_str()).cloned().unwrap_or_default();
            let config_drifts: Vec<Drift> = configs
                .iter()
                .filter_map(|(key, wanted)| {
                    let value = found.get(*key).cloned().unwrap_or_default();
                    (!same_setting(key, wanted, &value)).then(|| Drift {
                        setting: (*key).to_owned(),
                        wanted: wanted.clone(),
                        found: value,
                    })
                })
                .collect();
            let state = if repair && !config_drifts.is_empty() && drifts.is_empty() {
                alter(&admin, name, &configs, &options).await?;
                TopicState::Repaired(config_drifts)
            } else {
                drifts.extend(config_drifts);
                if drifts.is_empty() {
                    TopicState::Conforms
                } else {
                    TopicState::Drifted(drifts)
                }
            };
            states.insert(name.clone(), state);
        }
    }
    Ok(TopicsReport {
        brokers,
        policy,
        topics: names
            .into_iter()
            .map(|name| {
                let state = states.remove(&name).unwrap_or(TopicState::Conforms);
                (name, state)
            })
            .collect(),
    })
}

/// Two spellings of one setting mean the same: retention "forever" is `-1` on Apache Kafka, and
/// the largest 64-bit value (which earlier releases wrote) keeps records as long.
fn same_setting(key: &str, wanted: &str, found: &str) -> bool {
    if wanted == found {
        return true;
    }
    key == "retention.ms" && wanted == "-1" && found == i64::MAX.to_string()
}

/// How the topic's partition count and replica count differ from the policy.
fn shape_drift(
    cluster: &ClusterView,
    name: &str,
    policy: &TopicPolicy,
) -> Result<Vec<Drift>, LogError> {
    let (partitions, replicas) = *cluster
        .topics
        .get(name)
        .ok_or_else(|| LogError::UnknownTopic(name.to_owned()))?;
    let mut drifts = Vec::new();
    if partitions != policy.partitions {
        drifts.push(Drift {
            setting: "partitions".to_owned(),
            wanted: policy.partitions.to_string(),
            found: partitions.to_string(),
        });
    }
    if replicas != policy.replication_factor {
        drifts.push(Drift {
            setting: "replication.factor".to_owned(),
            wanted: policy.replication_factor.to_string(),
            found: replicas.to_string(),
        });
    }
    Ok(drifts)
}

/// Every config of each topic, by topic name.
async fn describe(
    admin: &AdminClient<DefaultClientContext>,
    names: &[&String],
    options: &AdminOptions,
) -> Result<BTreeMap<String, BTreeMap<String, String>>, LogError> {
    let resources: Vec<ResourceSpecifier<'_>> = names
        .iter()
        .map(|name| ResourceSpecifier::Topic(name.as_str()))
        .collect();
    let mut described = BTreeMap::new();
    for result in admin.describe_configs(&resources, options).await? {
        let resource =
            result.map_err(|code| LogError::Kafka(rdkafka::error::KafkaError::AdminOp(code)))?;
        if let OwnedResourceSpecifier::Topic(name) = resource.specifier {
            let entries = resource
                .entries
                .into_iter()
                .map(|entry| (entry.name, entry.value.unwrap_or_default()))
                .collect();
            described.insert(name, entries);
        }
    }
    Ok(described)
}

/// Sets the policy's configs on one topic. (`AlterConfigs` replaces a topic's dynamic configs
/// as a whole; the deployment owns its topics, so the policy's are the only ones it needs.)
async fn alter(
    admin: &AdminClient<DefaultClientContext>,
    name: &str,
    configs: &[(&'static str, String)],
    options: &AdminOptions,
) -> Result<(), LogError> {
    let change = configs.iter().fold(
        AlterConfig::new(ResourceSpecifier::Topic(name)),
        |change, (key, value)| change.set(key, value),
    );
    for result in admin.alter_configs(&[change], options).await? {
        result.map_err(|(_, code)| LogError::Kafka(rdkafka::error::KafkaError::AdminOp(code)))?;
    }
    tracing::info!(topic = %name, "topic configs set to the policy");
    Ok(())
}

/// Checks that every event topic has the configured number of partitions. A service calls it
/// before it reads the log: records are placed by key, so another partition count puts an
/// aggregate's new events on another partition than its old ones, and the per-aggregate order
/// that `docs/consistency.md` rests on is gone. Fails with [`LogError::PartitionCount`] naming
/// the topic, or with the broker's error when it cannot be asked.
pub async fn verify_partitions(settings: &KafkaSettings) -> Result<(), LogError> {
    let cluster = cluster_view(settings).await?;
    for name in Topics::new(&settings.topic_prefix).event_topics() {
        let (found, _) = *cluster
            .topics
            .get(&name)
            .ok_or_else(|| LogError::UnknownTopic(name.clone()))?;
        if found != settings.partitions {
            return Err(LogError::PartitionCount {
                topic: name,
                configured: settings.partitions,
                found,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(rf: Option<i32>, isr: Option<i32>) -> KafkaSettings {
        KafkaSettings {
            replication_factor: rf,
            min_insync_replicas: isr,
            ..KafkaSettings::default()
        }
    }

    #[test]
    fn a_single_broker_gets_one_replica_that_must_hold_the_write() {
        let policy = TopicPolicy::for_cluster(&settings(None, None), 1);
        assert_eq!(
            (policy.replication_factor, policy.min_insync_replicas),
            (1, 1)
        );
    }

    #[test]
    fn three_or_more_brokers_get_three_replicas_of_which_two_must_hold_the_write() {
        for brokers in [3, 5, 9] {
            let policy = TopicPolicy::for_cluster(&settings(None, None), brokers);
            assert_eq!(
                (policy.replication_factor, policy.min_insync_replicas),
                (3, 2),
                "{brokers} brokers"
            );
        }
    }

    #[test]
    fn two_brokers_get_two_replicas_and_keep_writing_with_one() {
        let policy = TopicPolicy::for_cluster(&settings(None, None), 2);
        assert_eq!(
            (policy.replication_factor, policy.min_insync_replicas),
            (2, 1)
        );
    }

    #[test]
    fn configured_replicas_win_over_the_cluster_size() {
        let policy = TopicPolicy::for_cluster(&settings(Some(5), Some(3)), 7);
        assert_eq!(
            (policy.replication_factor, policy.min_insync_replicas),
            (5, 3)
        );
        let policy = TopicPolicy::for_cluster(&settings(Some(3), None), 7);
        assert_eq!(policy.min_insync_replicas, 2);
    }

    #[test]
    fn the_policy_never_deletes_never_compacts_and_never_elects_an_unclean_leader() {
        let configs: BTreeMap<_, _> = TopicPolicy::for_cluster(&settings(None, None), 3)
            .configs()
            .into_iter()
            .collect();
        assert_eq!(configs["retention.ms"], "-1");
        assert_eq!(configs["retention.bytes"], "-1");
        assert_eq!(configs["cleanup.policy"], "delete");
        assert_eq!(configs["unclean.leader.election.enable"], "false");
        assert_eq!(configs["min.insync.replicas"], "2");
    }

    #[test]
    fn the_old_spelling_of_forever_is_not_drift() {
        assert!(same_setting("retention.ms", "-1", "9223372036854775807"));
        assert!(!same_setting("retention.ms", "-1", "604800000"));
        assert!(!same_setting("min.insync.replicas", "2", "1"));
    }

    #[test]
    fn only_configs_are_repaired_in_place() {
        let drift = |setting: &str| Drift {
            setting: setting.to_owned(),
            wanted: "1".to_owned(),
            found: "2".to_owned(),
        };
        assert!(!drift("partitions").repairable());
        assert!(!drift("replication.factor").repairable());
        assert!(drift("min.insync.replicas").repairable());
        assert!(drift("retention.ms").repairable());
    }
}
