//! `SqliteBus`: a durable queue in one SQLite file, for single-machine deployments.
//!
//! Every state change is one SQL statement committed in WAL mode with
//! `synchronous = FULL`, so a `kill -9` (or power loss) at any instant leaves each
//! message either published or not, claimed or not, acked or not. Several processes can
//! share the file; SQLite serialises writers and `busy_timeout` makes them wait.
//!
//! A claim sets a fresh random receipt and a `visible_at` in the future; a message whose
//! `visible_at` has passed is claimable again, with its attempt count incremented. Acks
//! and extends must present the current receipt, so a consumer whose claim expired cannot
//! ack a message another consumer now holds.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

use crate::{
    Bus, BusError, BusErrorKind, DeadLetter, Delivery, Outgoing, QueueDepth, check_message_sizes, validate_topic,
};

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS messages (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    topic       TEXT    NOT NULL,
    key         TEXT,
    payload     BLOB    NOT NULL,
    enqueued_at INTEGER NOT NULL,
    visible_at  INTEGER NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    receipt     TEXT,
    dead        INTEGER NOT NULL DEFAULT 0,
    dead_reason TEXT
);
CREATE INDEX IF NOT EXISTS messages_ready ON messages (topic, dead, visible_at, seq);
CREATE INDEX IF NOT EXISTS messages_by_key ON messages (topic, key, seq) WHERE key IS NOT NULL;
-- Every claim first dead-letters the live messages that used up their attempts: without
-- this index that is a scan of the whole queue (a second per claim at 100,000 messages).
CREATE INDEX IF NOT EXISTS messages_exhausted ON messages (topic, attempts) WHERE dead = 0;
CREATE TABLE IF NOT EXISTS fanout (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    topic        TEXT    NOT NULL,
    payload      BLOB    NOT NULL,
    published_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS fanout_by_topic ON fanout (topic, seq);
CREATE INDEX IF NOT EXISTS fanout_by_age ON fanout (published_at);
"#;

/// How long a fanned-out message stays for subscribers to read.
const FANOUT_KEEP: Duration = Duration::from_secs(600);

/// How often a subscriber looks for new fanned-out messages.
const FANOUT_POLL: Duration = Duration::from_millis(100);

#[derive(Debug, Clone)]
pub struct SqliteBus {
    pool: SqlitePool,
    max_attempts: u32,
}

/// The embedded bus's payload limit. Pack tasks and events are a few hundred bytes.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_micros() as i64)
        .unwrap_or(0)
}

fn micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX / 4)
}

fn db_error(what: &str) -> impl Fn(sqlx::Error) -> BusError + '_ {
    move |error| {
        let kind = match &error {
            sqlx::Error::Database(db) if db.message().contains("locked") || db.message().contains("busy") => {
                BusErrorKind::Transient
            }
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) => BusErrorKind::Transient,
            _ => BusErrorKind::Other,
        };
        BusError::new(kind, format!("sqlite bus: {what} failed")).with_source(error)
    }
}

impl SqliteBus {
    /// Opens (creating if needed) the queue file. `max_attempts` deliveries are allowed
    /// before a message is dead-lettered.
    pub async fn open(path: impl AsRef<Path>, max_attempts: u32) -> Result<Self, BusError> {
        if max_attempts == 0 {
            return Err(BusError::new(BusErrorKind::Config, "max_attempts must be at least 1"));
        }
        let url = format!("sqlite://{}", path.as_ref().display());
        let options = SqliteConnectOptions::from_str(&url)
            .map_err(|e| BusError::new(BusErrorKind::Config, "invalid bus path").with_source(e))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(30));
        let pool = SqlitePoolOptions::new().max_connections(4).connect_with(options).await.map_err(db_error("open"))?;
        sqlx::raw_sql(SCHEMA).execute(&pool).await.map_err(db_error("create schema"))?;
        Ok(SqliteBus { pool, max_attempts })
    }

    fn seq_of(delivery: &Delivery) -> Result<i64, BusError> {
        delivery
            .message_id
            .parse()
            .map_err(|_| BusError::new(BusErrorKind::InvalidInput, "not a message id of this bus"))
    }

    async fn update_with_receipt(
        &self,
        delivery: &Delivery,
        sql: &str,
        value: i64,
        what: &str,
    ) -> Result<(), BusError> {
        let seq = Self::seq_of(delivery)?;
        let result = sqlx::query(sql)
            .bind(value)
            .bind(seq)
            .bind(&delivery.receipt)
            .execute(&self.pool)
            .await
            .map_err(db_error(what))?;
        if result.rows_affected() == 0 {
            return Err(BusError::new(BusErrorKind::StaleReceipt, format!("{what}: receipt is no longer current")));
        }
        Ok(())
    }
}

#[async_trait]
impl Bus for SqliteBus {
    async fn publish(&self, topic: &str, messages: Vec<Outgoing>) -> Result<(), BusError> {
        validate_topic(topic)?;
        check_message_sizes("sqlite bus", &messages, MAX_MESSAGE_BYTES)?;
        if messages.is_empty() {
            return Ok(());
        }
        let now = now_micros();
        let fan_out = crate::topics::fans_out(topic);
        let mut transaction = self.pool.begin().await.map_err(db_error("begin publish"))?;
        if fan_out {
            sqlx::query("DELETE FROM fanout WHERE published_at < ?")
                .bind(now - micros(FANOUT_KEEP))
                .execute(&mut *transaction)
                .await
                .map_err(db_error("prune fan-out"))?;
            for message in &messages {
                sqlx::query("INSERT INTO fanout (topic, payload, published_at) VALUES (?, ?, ?)")
                    .bind(topic)
                    .bind(message.payload.as_ref())
                    .bind(now)
                    .execute(&mut *transaction)
                    .await
                    .map_err(db_error("fan out"))?;
            }
        }
        for message in messages {
            sqlx::query("INSERT INTO messages (topic, key, payload, enqueued_at, visible_at) VALUES (?, ?, ?, ?, ?)")
                .bind(topic)
                .bind(message.key)
                .bind(message.payload.as_ref())
                .bind(now)
                .bind(now)
                .execute(&mut *transaction)
                .await
                .map_err(db_error("publish"))?;
        }
        transaction.commit().await.map_err(db_error("commit publish"))?;
        Ok(())
    }

    /// Polls the `fanout` table every 100 ms from the newest message at the time of the
    /// call; messages stay there for ten minutes, so a slow subscriber loses none younger.
    fn fans_out(&self) -> bool {
        true
    }

    async fn subscribe(&self, topic: &str) -> Result<crate::Subscription, BusError> {
        crate::check_broadcast_topic(topic)?;
        let start: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM fanout WHERE topic = ?")
            .bind(topic)
            .fetch_one(&self.pool)
            .await
            .map_err(db_error("subscribe"))?;
        let (pool, topic) = (self.pool.clone(), topic.to_owned());
        let stream =
            futures::stream::unfold((start, std::collections::VecDeque::new()), move |(mut last, mut ready)| {
                let (pool, topic) = (pool.clone(), topic.clone());
                async move {
                    loop {
                        if let Some(payload) = ready.pop_front() {
                            return Some((Ok(payload), (last, ready)));
                        }
                        let rows = sqlx::query(
                            "SELECT seq, payload FROM fanout WHERE topic = ? AND seq > ? ORDER BY seq LIMIT 256",
                        )
                        .bind(&topic)
                        .bind(last)
                        .fetch_all(&pool)
                        .await;
                        match rows {
                            Ok(rows) if rows.is_empty() => tokio::time::sleep(FANOUT_POLL).await,
                            Ok(rows) => {
                                for row in rows {
                                    last = row.get::<i64, _>("seq");
                                    ready.push_back(Bytes::from(row.get::<Vec<u8>, _>("payload")));
                                }
                            }
                            Err(error) => {
                                tokio::time::sleep(FANOUT_POLL).await;
                                return Some((Err(db_error("read fan-out")(error)), (last, ready)));
                            }
                        }
                    }
                }
            });
        Ok(Box::pin(stream))
    }

    async fn claim(&self, topic: &str, max: usize, visibility: Duration) -> Result<Vec<Delivery>, BusError> {
        validate_topic(topic)?;
        if max == 0 {
            return Ok(Vec::new());
        }
        let now = now_micros();
        sqlx::query(
            "UPDATE messages SET dead = 1, dead_reason = 'delivered ' || attempts || ' times without an ack' \
             WHERE topic = ? AND dead = 0 AND visible_at <= ? AND attempts >= ?",
        )
        .bind(topic)
        .bind(now)
        .bind(i64::from(self.max_attempts))
        .execute(&self.pool)
        .await
        .map_err(db_error("dead-letter exhausted messages"))?;
        let nonce = format!("{:016x}", rand::random::<u64>());
        // Only the oldest live message of each ordering key may be claimed.
        let rows = sqlx::query(
            "UPDATE messages SET attempts = attempts + 1, visible_at = ?, receipt = seq || ':' || ? \
             WHERE seq IN ( \
                SELECT m.seq FROM messages m WHERE m.topic = ? AND m.dead = 0 AND m.visible_at <= ? \
                AND (m.key IS NULL OR NOT EXISTS ( \
                    SELECT 1 FROM messages e WHERE e.topic = m.topic AND e.key = m.key AND e.seq < m.seq AND e.dead = 0)) \
                ORDER BY m.seq LIMIT ?) \
             RETURNING seq, key, payload, attempts, receipt",
        )
        .bind(now.saturating_add(micros(visibility)))
        .bind(&nonce)
        .bind(topic)
        .bind(now)
        .bind(i64::try_from(max).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(db_error("claim"))?;
        let mut deliveries = Vec::with_capacity(rows.len());
        for row in rows {
            let seq: i64 = row.get("seq");
            let payload: Vec<u8> = row.get("payload");
            let attempts: i64 = row.get("attempts");
            deliveries.push(Delivery {
                topic: topic.to_owned(),
                message_id: seq.to_string(),
                receipt: row.get("receipt"),
                key: row.get("key"),
                payload: Bytes::from(payload),
                attempt: u32::try_from(attempts).unwrap_or(u32::MAX),
            });
        }
        deliveries.sort_by_key(|delivery| delivery.message_id.parse::<i64>().unwrap_or(i64::MAX));
        Ok(deliveries)
    }

    async fn ack(&self, delivery: &Delivery) -> Result<(), BusError> {
        let seq = Self::seq_of(delivery)?;
        let result = sqlx::query("DELETE FROM messages WHERE seq = ? AND receipt = ? AND dead = 0")
            .bind(seq)
            .bind(&delivery.receipt)
            .execute(&self.pool)
            .await
            .map_err(db_error("ack"))?;
        if result.rows_affected() == 0 {
            return Err(BusError::new(BusErrorKind::StaleReceipt, "ack: receipt is no longer current"));
        }
        Ok(())
    }

    /// One transaction (one fsync) for the whole batch: an ingest worker acks hundreds of
    /// events at once.
    async fn ack_batch(&self, deliveries: &[Delivery]) -> Vec<Result<(), BusError>> {
        let attempt = async {
            let mut transaction = self.pool.begin().await.map_err(db_error("begin ack"))?;
            let mut results = Vec::with_capacity(deliveries.len());
            for delivery in deliveries {
                let seq = match Self::seq_of(delivery) {
                    Ok(seq) => seq,
                    Err(error) => {
                        results.push(Err(error));
                        continue;
                    }
                };
                let result = sqlx::query("DELETE FROM messages WHERE seq = ? AND receipt = ? AND dead = 0")
                    .bind(seq)
                    .bind(&delivery.receipt)
                    .execute(&mut *transaction)
                    .await
                    .map_err(db_error("ack"))?;
                results.push(if result.rows_affected() == 0 {
                    Err(BusError::new(BusErrorKind::StaleReceipt, "ack: receipt is no longer current"))
                } else {
                    Ok(())
                });
            }
            transaction.commit().await.map_err(db_error("commit ack"))?;
            Ok::<_, BusError>(results)
        };
        match attempt.await {
            Ok(results) => results,
            Err(error) => deliveries.iter().map(|_| Err(BusError::new(error.kind, error.message.clone()))).collect(),
        }
    }

    async fn nack(&self, delivery: &Delivery, delay: Duration) -> Result<(), BusError> {
        let visible_at = now_micros().saturating_add(micros(delay));
        self.update_with_receipt(
            delivery,
            "UPDATE messages SET visible_at = ?, receipt = NULL WHERE seq = ? AND receipt = ? AND dead = 0",
            visible_at,
            "nack",
        )
        .await
    }

    async fn extend(&self, delivery: &Delivery, visibility: Duration) -> Result<(), BusError> {
        let visible_at = now_micros().saturating_add(micros(visibility));
        self.update_with_receipt(
            delivery,
            "UPDATE messages SET visible_at = ? WHERE seq = ? AND receipt = ? AND dead = 0",
            visible_at,
            "extend",
        )
        .await
    }

    async fn dead_letter(&self, delivery: &Delivery, reason: &str) -> Result<(), BusError> {
        let seq = Self::seq_of(delivery)?;
        let reason: String = reason.chars().take(1000).collect();
        let result =
            sqlx::query("UPDATE messages SET dead = 1, dead_reason = ? WHERE seq = ? AND receipt = ? AND dead = 0")
                .bind(reason)
                .bind(seq)
                .bind(&delivery.receipt)
                .execute(&self.pool)
                .await
                .map_err(db_error("dead-letter"))?;
        if result.rows_affected() == 0 {
            return Err(BusError::new(BusErrorKind::StaleReceipt, "dead-letter: receipt is no longer current"));
        }
        Ok(())
    }

    async fn depth(&self, topic: &str) -> Result<QueueDepth, BusError> {
        validate_topic(topic)?;
        let row = sqlx::query(
            "SELECT \
               COALESCE(SUM(CASE WHEN dead = 0 AND visible_at <= ? THEN 1 ELSE 0 END), 0) AS visible, \
               COALESCE(SUM(CASE WHEN dead = 0 AND visible_at > ? THEN 1 ELSE 0 END), 0) AS in_flight, \
               COALESCE(SUM(dead), 0) AS dead \
             FROM messages WHERE topic = ?",
        )
        .bind(now_micros())
        .bind(now_micros())
        .bind(topic)
        .fetch_one(&self.pool)
        .await
        .map_err(db_error("depth"))?;
        let count = |name: &str| u64::try_from(row.get::<i64, _>(name)).unwrap_or(0);
        Ok(QueueDepth { visible: count("visible"), in_flight: count("in_flight"), dead: count("dead") })
    }

    async fn dead_letters(&self, topic: &str, max: usize) -> Result<Vec<DeadLetter>, BusError> {
        validate_topic(topic)?;
        let rows = sqlx::query(
            "SELECT seq, key, payload, attempts, dead_reason FROM messages WHERE topic = ? AND dead = 1 ORDER BY seq LIMIT ?",
        )
        .bind(topic)
        .bind(i64::try_from(max).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(db_error("list dead letters"))?;
        Ok(rows
            .into_iter()
            .map(|row| {
                let payload: Vec<u8> = row.get("payload");
                let attempts: i64 = row.get("attempts");
                DeadLetter {
                    message_id: row.get::<i64, _>("seq").to_string(),
                    key: row.get("key"),
                    payload: Bytes::from(payload),
                    attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
                    reason: row.get::<Option<String>, _>("dead_reason").unwrap_or_default(),
                }
            })
            .collect())
    }

    async fn ensure_topics(&self, topics: &[&str]) -> Result<(), BusError> {
        // One table holds every topic; a topic exists once it is named correctly.
        topics.iter().try_for_each(|topic| validate_topic(topic))
    }

    fn max_message_bytes(&self) -> usize {
        MAX_MESSAGE_BYTES
    }
}
