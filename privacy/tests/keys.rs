//! The key store against a real PostgreSQL (`#[sqlx::test]` gives each test a database).

#![allow(clippy::unwrap_used)] // A test fails loudly on any unexpected error; that is the point.

use domain::booking::SealedPersonal;
use domain::fixtures::personal_data;
use privacy::{KeyStore, MasterKeys, Opened, PrivacyError, PrivacySettings};
use sqlx::PgPool;
use uuid::Uuid;

async fn store(pool: &PgPool, master_keys: &str) -> KeyStore {
    KeyStore::connect_with(
        (*pool.connect_options()).clone(),
        &PrivacySettings::with_master_keys(master_keys),
    )
    .await
    .unwrap()
}

#[sqlx::test(migrations = false)]
async fn twin_requests_sealing_at_once_share_one_key(pool: PgPool) {
    let keys = std::sync::Arc::new(store(&pool, &MasterKeys::generate("m1")).await);
    let booking = Uuid::new_v4();
    // The twins race to insert the booking's key: the losers' statement cannot see the winner's
    // row in its snapshot and must read it again, not call the booking erased.
    let twins: Vec<_> = (0..8)
        .map(|_| {
            let keys = keys.clone();
            tokio::spawn(async move { keys.seal(booking, &personal_data()).await })
        })
        .collect();
    let mut key_ids = Vec::new();
    for twin in twins {
        key_ids.push(twin.await.unwrap().unwrap().key_id());
    }
    key_ids.dedup();
    assert_eq!(key_ids.len(), 1, "{key_ids:?}");
}

#[sqlx::test(migrations = false)]
async fn a_sealed_booking_opens_until_its_key_is_erased_and_then_reads_erased(pool: PgPool) {
    let keys = store(&pool, &MasterKeys::generate("m1")).await;
    let booking = Uuid::new_v4();
    let sealed = keys.seal(booking, &personal_data()).await.unwrap();
    assert!(matches!(sealed, SealedPersonal::Encrypted(_)));
    assert_eq!(
        keys.open(booking, &sealed).await.unwrap(),
        Opened::Personal(personal_data())
    );
    // A retried request gets the same key, so its box opens too.
    let again = keys.seal(booking, &personal_data()).await.unwrap();
    assert_eq!(again.key_id(), sealed.key_id());

    let first = keys.erase(booking).await.unwrap();
    assert_eq!(keys.open(booking, &sealed).await.unwrap(), Opened::Erased);
    assert_eq!(keys.erase(booking).await.unwrap(), first, "erasing twice");
    assert!(keys.is_erased(booking).await.unwrap());
    assert!(matches!(
        keys.seal(booking, &personal_data()).await,
        Err(PrivacyError::Erased(_))
    ));
    let wrapped: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT wrapped_key FROM privacy.data_keys WHERE booking_id = $1")
            .bind(booking)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(wrapped, None, "the key material is gone");

    // A first-release record (plaintext upcast) reads erased once its booking is erased.
    let legacy_booking = Uuid::new_v4();
    let legacy = SealedPersonal::Legacy {
        plaintext: personal_data(),
    };
    assert_eq!(
        keys.open(legacy_booking, &legacy).await.unwrap(),
        Opened::Personal(personal_data())
    );
    keys.erase(legacy_booking).await.unwrap();
    assert_eq!(
        keys.open(legacy_booking, &legacy).await.unwrap(),
        Opened::Erased
    );
    assert_eq!(
        keys.erased_bookings().await.unwrap(),
        [booking, legacy_booking]
    );
}

#[sqlx::test(migrations = false)]
async fn rotating_the_master_key_keeps_every_booking_readable(pool: PgPool) {
    let old = MasterKeys::generate("old");
    let bookings: Vec<Uuid> = (0..5).map(|_| Uuid::new_v4()).collect();
    let before = store(&pool, &old).await;
    let mut sealed = Vec::new();
    for booking in &bookings {
        sealed.push(before.seal(*booking, &personal_data()).await.unwrap());
    }
    before.erase(bookings[4]).await.unwrap();

    // The new key goes first; the old one stays until every key has moved.
    let new = MasterKeys::generate("new");
    let rotating = store(&pool, &format!("{new},{old}")).await;
    let status = rotating.status().await.unwrap();
    assert_eq!(status.by_master_key, [("old".to_owned(), 4)]);
    assert_eq!(status.current_master_key, "new");
    // A booking made mid-rotation is wrapped by the new key.
    let during = Uuid::new_v4();
    let during_sealed = rotating.seal(during, &personal_data()).await.unwrap();
    assert_eq!(rotating.rewrap().await.unwrap(), 4);
    assert_eq!(rotating.rewrap().await.unwrap(), 0, "idempotent");
    let status = rotating.status().await.unwrap();
    assert_eq!(status.by_master_key, [("new".to_owned(), 5)]);
    assert_eq!(status.erased, 1);

    // The old key removed: everything still opens (but the erased one).
    let after = store(&pool, &new).await;
    for (booking, sealed) in bookings.iter().zip(&sealed).take(4) {
        assert_eq!(
            after.open(*booking, sealed).await.unwrap(),
            Opened::Personal(personal_data())
        );
    }
    assert_eq!(
        after.open(bookings[4], &sealed[4]).await.unwrap(),
        Opened::Erased
    );
    assert_eq!(
        after.open(during, &during_sealed).await.unwrap(),
        Opened::Personal(personal_data())
    );
    // Without the key that wraps them, keys do not open: the settings are wrong, not the data.
    let wrong = store(&pool, &MasterKeys::generate("other")).await;
    assert!(matches!(
        wrong.open(bookings[0], &sealed[0]).await,
        Err(PrivacyError::UnknownMasterKey { .. })
    ));
}

#[sqlx::test(migrations = false)]
async fn a_prefetch_loads_a_batch_of_keys_in_one_go_and_opens_them_from_the_cache(pool: PgPool) {
    let master = MasterKeys::generate("m1");
    let writer = store(&pool, &master).await;
    let mut sealed = Vec::new();
    for _ in 0..20 {
        let booking = Uuid::new_v4();
        sealed.push((
            booking,
            writer.seal(booking, &personal_data()).await.unwrap(),
        ));
    }
    let (erased, _) = &sealed[0];
    writer.erase(*erased).await.unwrap();

    // A reader with a cold cache, as a projector replaying the log.
    let reader = store(&pool, &master).await;
    let ids: Vec<Uuid> = sealed.iter().map(|(id, _)| *id).collect();
    reader.prefetch(&ids).await.unwrap();
    // From here the table is gone: whatever opens, opened from what the prefetch cached.
    sqlx::query("DELETE FROM privacy.data_keys")
        .execute(&pool)
        .await
        .unwrap();
    for (booking, box_) in &sealed[1..] {
        assert_eq!(
            reader.open(*booking, box_).await.unwrap(),
            Opened::Personal(personal_data()),
            "booking {booking} was prefetched"
        );
    }
    assert_eq!(
        reader.open(*erased, &sealed[0].1).await.unwrap(),
        Opened::Erased,
        "an erased key is prefetched as erased"
    );
    // Not prefetched: read now, from the emptied table.
    let other = Uuid::new_v4();
    let other_box = writer.seal(other, &personal_data()).await.unwrap();
    sqlx::query("DELETE FROM privacy.data_keys")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(
        reader.open(other, &other_box).await.unwrap(),
        Opened::Erased
    );
}
