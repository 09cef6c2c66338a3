//! `fmctl privacy status` and `fmctl privacy rewrap`: the bookings' data keys and the master keys
//! that wrap them (docs/privacy.md, docs/operations.md "Master-key rotation"); `fmctl privacy
//! show`: one booking's personal data opened (or `erased`) for the ops role; and opening a
//! booking's sealed personal data for `fmctl events history` when the operator has the master
//! keys.
//!
//! Reads `FM_DATABASE__URL` (or `FM_PRIVACY__DATABASE_URL`) and `FM_PRIVACY__MASTER_KEYS`, like
//! the services.

use anyhow::Context;
use clap::Subcommand;
use domain::booking::SealedPersonal;
use platform::settings::DatabaseSettings;
use privacy::{KeyStore, Opened, PrivacySettings};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

#[derive(Debug, Subcommand)]
pub(crate) enum PrivacyCommand {
    /// How many data keys each master key wraps, how many bookings are erased, and which master
    /// key wraps new keys. A master key may be removed from the settings once it wraps none.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Also read the booking topic and count the bookings written before this release
        /// (`BookingRequested` v1, personal data in plaintext in the broker's files), and how
        /// many of them are erased everywhere but there.
        #[arg(long)]
        log: bool,
    },
    /// Re-wrap every data key under the first master key of `FM_PRIVACY__MASTER_KEYS`, a row at a
    /// time (idempotent; safe while the services run).
    Rewrap,
    /// Show a booking's personal data as the log holds it, opened with its data key (for the
    /// ops role, who holds the master keys); `erased` once its key is destroyed.
    #[command(
        after_help = "Examples:\n  fmctl privacy show 0b5c…\n  fmctl privacy show 0b5c… --json"
    )]
    Show {
        /// The booking id.
        booking_id: Uuid,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Deserialize)]
struct Settings {
    #[serde(default)]
    database: DatabaseSettings,
    privacy: Option<PrivacySettings>,
}

/// The key store of the settings, if they name master keys.
pub(crate) async fn key_store() -> anyhow::Result<Option<KeyStore>> {
    let settings: Settings =
        platform::settings::load().context("Failed to read the FM_* configuration")?;
    let Some(privacy) = settings.privacy else {
        return Ok(None);
    };
    Ok(Some(
        KeyStore::connect(&settings.database, &privacy)
            .await
            .context("Failed to open the data keys (FM_DATABASE__URL, FM_PRIVACY__MASTER_KEYS)")?,
    ))
}

pub(crate) async fn privacy(command: PrivacyCommand) -> anyhow::Result<()> {
    let keys = key_store()
        .await?
        .context("FM_PRIVACY__MASTER_KEYS is not set")?;
    match command {
        PrivacyCommand::Status { json, log } => {
            let status = keys.status().await?;
            let plaintext = if log {
                Some(plaintext_in_log(&keys).await?)
            } else {
                None
            };
            if json {
                let mut value = serde_json::to_value(&status)?;
                if let Some((bookings, erased)) = plaintext {
                    value["plaintext_in_log"] =
                        json!({"bookings": bookings, "erased_elsewhere": erased});
                }
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                if let Some((bookings, erased)) = plaintext {
                    println!(
                        "bookings with plaintext in the broker's files (BookingRequested v1): \
                         {bookings}, of which {erased} erased everywhere else"
                    );
                }
                println!(
                    "new data keys are wrapped by: {}",
                    status.current_master_key
                );
                for (master, count) in &status.by_master_key {
                    println!("  {master}: {count} data keys");
                }
                println!("erased bookings: {}", status.erased);
            }
        }
        PrivacyCommand::Show { booking_id, json } => show(&keys, booking_id, json).await?,
        PrivacyCommand::Rewrap => {
            let moved = keys.rewrap().await?;
            let status = keys.status().await?;
            println!(
                "re-wrapped {moved} data keys under {}",
                status.current_master_key
            );
        }
    }
    Ok(())
}

/// What the log holds about one booking's people: its request's sealed box and date of death,
/// and whether its erasure is on the log.
struct Found {
    personal: Option<SealedPersonal>,
    date_of_death: Value,
    erased_on_log: bool,
    stored_version: u16,
}

/// The booking's request on the log, and whether its erasure is there too.
async fn find_request(booking_id: Uuid) -> anyhow::Result<Found> {
    let kafka = crate::inspect::kafka_settings()?;
    let topic = event_log::Topics::new(&kafka.topic_prefix).events(schemas::AggregateType::Booking);
    let mut found: Option<Found> = None;
    let mut erased_on_log = false;
    crate::inspect::scan(
        &kafka,
        vec![topic],
        crate::inspect::Start::Beginning,
        false,
        |record| {
            if let Some(envelope) = &record.envelope
                && envelope.aggregate_id == booking_id
            {
                match envelope.event_type.as_str() {
                    "BookingRequested" if found.is_none() => {
                        found = Some(Found {
                            personal: serde_json::from_value(envelope.data["personal"].clone())
                                .ok(),
                            date_of_death: envelope.data["date_of_death"].clone(),
                            erased_on_log: false,
                            stored_version: record.stored_version.unwrap_or(envelope.event_version),
                        });
                    }
                    "PersonalDataErased" => erased_on_log = true,
                    _ => {}
                }
            }
            Ok(true)
        },
    )
    .await?;
    let mut found = found.with_context(|| {
        format!(
            "booking {booking_id} has no BookingRequested on {}",
            kafka.topic_prefix
        )
    })?;
    found.erased_on_log = erased_on_log;
    Ok(found)
}

/// `fmctl privacy show`: the booking's request found on the log, its personal data opened.
async fn show(keys: &KeyStore, booking_id: Uuid, as_json: bool) -> anyhow::Result<()> {
    let found = find_request(booking_id).await?;
    let sealed = found
        .personal
        .as_ref()
        .with_context(|| format!("booking {booking_id}: its request holds no personal data box"))?;
    let key_id = sealed.key_id();
    let opened = keys.open(booking_id, sealed).await;
    let plaintext_in_log = found.stored_version == 1;
    if as_json {
        let (state, personal, error) = match &opened {
            Ok(Opened::Personal(personal)) => ("opened", serde_json::to_value(personal)?, None),
            Ok(Opened::Erased) => ("erased", json!("erased"), None),
            Err(error) => ("unopenable", Value::Null, Some(error.to_string())),
        };
        println!(
            "{}",
            json!({
                "booking_id": booking_id,
                "state": state,
                "personal": personal,
                "date_of_death": found.date_of_death,
                "key_id": key_id,
                "erased_on_log": found.erased_on_log,
                "plaintext_in_log": plaintext_in_log,
                "error": error,
            })
        );
    } else {
        print_text(booking_id, &found, key_id, &opened)?;
    }
    if let Err(error) = opened {
        anyhow::bail!("booking {booking_id}: {error}");
    }
    Ok(())
}

/// `fmctl privacy show`'s text: the data opened, or `[erased]`.
fn print_text(
    booking_id: Uuid,
    found: &Found,
    key_id: Option<Uuid>,
    opened: &Result<Opened, privacy::PrivacyError>,
) -> anyhow::Result<()> {
    let plaintext_in_log = found.stored_version == 1;
    let key = key_id.map_or_else(
        || "none: written before sealing".to_owned(),
        |id| id.to_string(),
    );
    match opened {
        Ok(Opened::Personal(personal)) => {
            println!("booking {booking_id}: personal data opened (data key {key})");
            println!(
                "deceased: {} (died {})",
                personal.deceased_full_name.as_str(),
                found.date_of_death.as_str().unwrap_or("?")
            );
            for (n, contact) in personal.family_contacts.iter().enumerate() {
                let contact = serde_json::to_value(contact)?;
                println!(
                    "contact {}: {} ({}) {} {}",
                    n + 1,
                    contact["name"].as_str().unwrap_or_default(),
                    contact["relationship"].as_str().unwrap_or_default(),
                    contact["email"].as_str().unwrap_or_default(),
                    contact["phone"].as_str().unwrap_or("(no phone)"),
                );
            }
        }
        Ok(Opened::Erased) => {
            println!("booking {booking_id}: personal data erased (data key {key} destroyed)");
            println!(
                "deceased: [erased] (died {})",
                found.date_of_death.as_str().unwrap_or("?")
            );
            println!("contacts: [erased]");
        }
        Err(_) => {}
    }
    println!(
        "erasure on the log: {}",
        if found.erased_on_log { "yes" } else { "no" }
    );
    if plaintext_in_log {
        println!(
            "written before sealing (BookingRequested v1): plaintext stays in the broker's files until the log is migrated (docs/privacy.md)"
        );
    }
    Ok(())
}

/// How many bookings of the log were requested as `BookingRequested` v1 (plaintext in the
/// broker's files), and how many of those are erased in the key store.
async fn plaintext_in_log(keys: &KeyStore) -> anyhow::Result<(usize, usize)> {
    let kafka = crate::inspect::kafka_settings()?;
    let topic = event_log::Topics::new(&kafka.topic_prefix).events(schemas::AggregateType::Booking);
    let mut bookings = Vec::new();
    crate::inspect::scan(
        &kafka,
        vec![topic],
        crate::inspect::Start::Beginning,
        false,
        |record| {
            if let Some(envelope) = &record.envelope
                && envelope.event_type == "BookingRequested"
                && record.stored_version == Some(1)
            {
                bookings.push(envelope.aggregate_id);
            }
            Ok(true)
        },
    )
    .await?;
    let mut erased = 0;
    for booking in &bookings {
        erased += usize::from(keys.is_erased(*booking).await?);
    }
    Ok((bookings.len(), erased))
}

/// `data` of a `BookingRequested` (v2, as read) with its sealed `personal` opened: the data in
/// the clear, or `"erased"`. Unchanged when it does not decode as a sealed box.
pub(crate) async fn open_personal(keys: &KeyStore, booking_id: Uuid, data: &mut Value) {
    let Some(sealed) = data
        .get("personal")
        .and_then(|personal| serde_json::from_value::<SealedPersonal>(personal.clone()).ok())
    else {
        return;
    };
    data["personal"] = match keys.open(booking_id, &sealed).await {
        Ok(Opened::Personal(personal)) => json!({ "opened": personal }),
        Ok(Opened::Erased) => json!("erased"),
        Err(error) => json!({ "unopened": error.to_string() }),
    };
}
