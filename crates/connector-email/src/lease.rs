//! Which replica follows which mailbox folder: leases in the shared SQL database.
//!
//! Every email replica beats a row of its own every few seconds. From the live
//! replicas it works out its fair share of the folders (all folders divided by the
//! live replicas, rounded up), takes free or expired leases up to that share, renews
//! the ones it holds, and gives back the ones above its share, so a replica that
//! joins gets folders from the others. A lease runs out `LEASE_TTL` after its last
//! renewal: the folders of a replica killed with SIGKILL are taken over by the others
//! within that and one beat. Two replicas never hold one lease at once; a replica
//! that cannot renew stops following before its lease could run out.
//!
//! Pure decisions ([`plan`]) are apart from the SQL that carries them out.

use crate::store::{EmailStore, StoreError};
use sqlx::Row as _;
use std::{collections::BTreeSet, time::Duration};

/// How long a lease (and a replica's heartbeat) lasts without renewal.
pub const LEASE_TTL: Duration = Duration::from_secs(15);

/// How often a replica beats, renews and rebalances.
pub const BEAT: Duration = Duration::from_secs(3);

/// A folder of a channel.
pub type FolderId = (String, String);

/// What a replica should do in one beat.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Free or expired leases to try to take.
    pub take: Vec<FolderId>,
    /// Held leases to give back (above the fair share).
    pub release: Vec<FolderId>,
}

/// Decides one beat: with `all` folders, `live` replicas, the leases this replica
/// `held` and the ones `taken` by live others, which to take and which to give back.
pub fn plan(
    all: &[FolderId],
    live: usize,
    held: &BTreeSet<FolderId>,
    taken: &BTreeSet<FolderId>,
) -> Plan {
    let share = all.len().div_ceil(live.max(1));
    let mut plan = Plan::default();
    if held.len() > share {
        plan.release = held.iter().skip(share).cloned().collect();
        return plan;
    }
    plan.take = all
        .iter()
        .filter(|f| !held.contains(*f) && !taken.contains(*f))
        .take(share - held.len())
        .cloned()
        .collect();
    plan
}

const SCHEMA: [&str; 2] = [
    "CREATE TABLE IF NOT EXISTS email_replicas (
        owner TEXT PRIMARY KEY,
        expires_at BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS email_leases (
        channel TEXT NOT NULL,
        folder TEXT NOT NULL,
        owner TEXT NOT NULL,
        expires_at BIGINT NOT NULL,
        PRIMARY KEY (channel, folder))",
];

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The lease tables of one replica.
#[derive(Debug, Clone)]
pub struct Leases {
    store: EmailStore,
    /// This replica's id.
    pub owner: String,
}

impl Leases {
    /// Creates the tables; `owner` names this replica.
    pub async fn new(store: EmailStore, owner: String) -> Result<Self, StoreError> {
        for statement in SCHEMA {
            sqlx::query(statement).execute(store.pool()).await?;
        }
        Ok(Self { store, owner })
    }

    /// One beat: heartbeat, renew, rebalance. Returns the folders this replica holds
    /// afterwards.
    pub async fn beat(&self, all: &[FolderId]) -> Result<BTreeSet<FolderId>, StoreError> {
        // One connection for the whole beat: sqlx pings a connection each time it goes
        // back to the pool, a round trip to its SQLite thread per statement otherwise.
        let mut conn = self.store.pool().acquire().await?;
        let now = now_ms();
        let until = now + LEASE_TTL.as_millis() as i64;
        sqlx::query(
            "INSERT INTO email_replicas (owner, expires_at) VALUES ($1, $2)
             ON CONFLICT (owner) DO UPDATE SET expires_at = excluded.expires_at",
        )
        .bind(&self.owner)
        .bind(until)
        .execute(&mut *conn)
        .await?;
        sqlx::query("DELETE FROM email_replicas WHERE expires_at < $1")
            .bind(now)
            .execute(&mut *conn)
            .await?;
        let live: i64 = sqlx::query("SELECT COUNT(*) FROM email_replicas")
            .fetch_one(&mut *conn)
            .await?
            .get(0);
        sqlx::query("UPDATE email_leases SET expires_at = $1 WHERE owner = $2")
            .bind(until)
            .bind(&self.owner)
            .execute(&mut *conn)
            .await?;
        let rows =
            sqlx::query("SELECT channel, folder, owner FROM email_leases WHERE expires_at >= $1")
                .bind(now)
                .fetch_all(&mut *conn)
                .await?;
        let mut held = BTreeSet::new();
        let mut taken = BTreeSet::new();
        for row in rows {
            let folder: FolderId = (row.get(0), row.get(1));
            if row.get::<String, _>(2) == self.owner {
                held.insert(folder);
            } else {
                taken.insert(folder);
            }
        }
        let decided = plan(all, live as usize, &held, &taken);
        for (channel, folder) in &decided.release {
            sqlx::query(
                "DELETE FROM email_leases WHERE channel = $1 AND folder = $2 AND owner = $3",
            )
            .bind(channel)
            .bind(folder)
            .bind(&self.owner)
            .execute(&mut *conn)
            .await?;
            held.remove(&(channel.clone(), folder.clone()));
        }
        for (channel, folder) in &decided.take {
            // Taken only if free or expired: of two replicas racing, one row wins.
            let done = sqlx::query(
                "INSERT INTO email_leases (channel, folder, owner, expires_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (channel, folder) DO UPDATE SET owner = excluded.owner,
                 expires_at = excluded.expires_at WHERE email_leases.expires_at < $5",
            )
            .bind(channel)
            .bind(folder)
            .bind(&self.owner)
            .bind(until)
            .bind(now)
            .execute(&mut *conn)
            .await?;
            if done.rows_affected() == 1 {
                held.insert((channel.clone(), folder.clone()));
            }
        }
        Ok(held)
    }

    /// Gives every lease back (at shutdown), so the others take over at once.
    pub async fn release_all(&self) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM email_leases WHERE owner = $1")
            .bind(&self.owner)
            .execute(self.store.pool())
            .await?;
        sqlx::query("DELETE FROM email_replicas WHERE owner = $1")
            .bind(&self.owner)
            .execute(self.store.pool())
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn folders(n: usize) -> Vec<FolderId> {
        (0..n).map(|i| (format!("c{i}"), "INBOX".into())).collect()
    }

    #[test]
    fn a_lone_replica_takes_everything_and_a_second_one_gets_half() {
        let all = folders(4);
        let none = BTreeSet::new();
        let alone = plan(&all, 1, &none, &none);
        assert_eq!(alone.take.len(), 4);
        let held: BTreeSet<_> = all.iter().cloned().collect();
        let crowded = plan(&all, 2, &held, &none);
        assert_eq!(crowded.release.len(), 2, "gives back above its share");
        let newcomer = plan(&all, 2, &none, &all[..2].iter().cloned().collect());
        assert_eq!(newcomer.take, all[2..].to_vec(), "takes only free folders");
    }

    #[tokio::test]
    async fn two_replicas_split_the_folders_and_the_survivor_takes_over() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("l.db").display());
        let store = EmailStore::connect(&url).await.unwrap();
        let a = Leases::new(store.clone(), "a".into()).await.unwrap();
        let b = Leases::new(store.clone(), "b".into()).await.unwrap();
        let all = folders(4);
        assert_eq!(a.beat(&all).await.unwrap().len(), 4);
        b.beat(&all).await.unwrap();
        // a sees two live replicas and gives two back; b takes them.
        let held_a = a.beat(&all).await.unwrap();
        let held_b = b.beat(&all).await.unwrap();
        assert_eq!(held_a.len(), 2);
        assert_eq!(held_b.len(), 2);
        assert!(held_a.is_disjoint(&held_b));
        b.release_all().await.unwrap();
        assert_eq!(a.beat(&all).await.unwrap().len(), 4);
    }
}
