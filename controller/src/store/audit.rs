//! The audit log: one row per command that changed nodes: who (the OS user and the SSH key
//! fingerprints used), what (the command and its arguments; never a secret, which never
//! reaches argv), where (the nodes, each with its result), which release manifests (sha256
//! digests), when, and the result. Tamper-evident: every row carries the sha256 of the row
//! before it and its own, computed over its id and every field, so [`Store::verify_audit`]
//! names the first row that was edited, or whose predecessor was deleted or moved. A chain
//! cannot show the removal of its newest rows; an operator who needs that anchors the newest
//! hash elsewhere (`fleet audit --json` prints it).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Store, StoreError, on_pool};

/// The hash a chain starts from (the `prev_hash` of row 1).
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What a command records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub at_ms: i64,
    pub os_user: String,
    pub key_fingerprints: Vec<String>,
    pub command: String,
    pub args: Vec<String>,
    /// Each node and its result.
    pub nodes: Vec<(String, String)>,
    /// sha256 of the release manifests involved.
    pub digests: Vec<String>,
    /// `ok`, or `failed: <why>`.
    pub result: String,
}

/// A stored row: the entry, its place in the chain and its hashes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRow {
    pub id: i64,
    #[serde(flatten)]
    pub entry: AuditEntry,
    pub prev_hash: String,
    pub hash: String,
}

/// How the chain was broken, at the first row where it shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tamper {
    /// The row's content no longer matches its hash.
    Edited { id: i64 },
    /// The row does not follow the one before it: a row before it was deleted, or rows were
    /// moved.
    Broken { id: i64, after: Option<i64> },
}

impl std::fmt::Display for Tamper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tamper::Edited { id } => write!(
                f,
                "audit row {id} was edited: its content does not match its hash"
            ),
            Tamper::Broken {
                id,
                after: Some(after),
            } => write!(
                f,
                "audit row {id} does not follow row {after}: a row between them was deleted, or rows were reordered"
            ),
            Tamper::Broken { id, after: None } => write!(
                f,
                "audit row {id} does not start the chain: earlier rows were deleted, or rows were reordered"
            ),
        }
    }
}

/// The hash of a row: sha256 over its id, its predecessor's hash and every field, each
/// length-prefixed so no two rows can encode alike.
fn row_hash(id: i64, prev_hash: &str, entry: &AuditEntry) -> String {
    let fields = serde_json::json!([
        id,
        prev_hash,
        entry.at_ms,
        entry.os_user,
        entry.key_fingerprints,
        entry.command,
        entry.args,
        entry.nodes,
        entry.digests,
        entry.result,
    ]);
    let bytes = fields.to_string();
    let mut hasher = Sha256::new();
    hasher.update(b"fleet audit row v1\0");
    hasher.update((bytes.len() as u64).to_be_bytes());
    hasher.update(bytes.as_bytes());
    hex::encode(hasher.finalize())
}

fn json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("plain strings and lists encode")
}

fn parse<T: serde::de::DeserializeOwned>(
    id: i64,
    column: &str,
    text: &str,
) -> Result<T, StoreError> {
    serde_json::from_str(text)
        .map_err(|e| StoreError::Corrupt(format!("audit row {id}: {column} is not readable: {e}")))
}

type RawRow = (
    i64,
    i64,
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    String,
);

fn from_raw(raw: RawRow) -> Result<AuditRow, StoreError> {
    let (id, at_ms, os_user, keys, command, args, nodes, digests, result, prev_hash, hash) = raw;
    Ok(AuditRow {
        id,
        entry: AuditEntry {
            at_ms,
            os_user,
            key_fingerprints: parse(id, "key_fingerprints", &keys)?,
            command,
            args: parse(id, "args", &args)?,
            nodes: parse(id, "nodes", &nodes)?,
            digests: parse(id, "digests", &digests)?,
            result,
        },
        prev_hash,
        hash,
    })
}

const COLUMNS: &str =
    "id, at_ms, os_user, key_fingerprints, command, args, nodes, digests, result, prev_hash, hash";

impl Store {
    /// Appends `entry` at the end of the chain; one writer at a time (SQLite: the write lock
    /// taken up front; Postgres: a transaction-scoped advisory lock).
    pub async fn append_audit(&self, entry: &AuditEntry) -> Result<AuditRow, StoreError> {
        let insert = format!(
            "INSERT INTO audit ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
        );
        let last = "SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1";
        on_pool!(self, pool => {
            let mut tx = match self {
                Store::Sqlite(_) => pool.begin_with("BEGIN IMMEDIATE").await?,
                Store::Postgres(_) => pool.begin().await?,
            };
            if matches!(self, Store::Postgres(_)) {
                // 0x666c656574 = "fleet": one appender at a time.
                sqlx::query("SELECT pg_advisory_xact_lock(440213661044)")
                    .execute(&mut *tx)
                    .await?;
            }
            let previous: Option<(i64, String)> = sqlx::query_as(last).fetch_optional(&mut *tx).await?;
            let (id, prev_hash) = match previous {
                Some((id, hash)) => (id + 1, hash),
                None => (1, GENESIS.to_owned()),
            };
            let hash = row_hash(id, &prev_hash, entry);
            sqlx::query(sqlx::AssertSqlSafe(insert.as_str()))
                .bind(id)
                .bind(entry.at_ms)
                .bind(&entry.os_user)
                .bind(json(&entry.key_fingerprints))
                .bind(&entry.command)
                .bind(json(&entry.args))
                .bind(json(&entry.nodes))
                .bind(json(&entry.digests))
                .bind(&entry.result)
                .bind(&prev_hash)
                .bind(&hash)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(AuditRow { id, entry: entry.clone(), prev_hash, hash })
        })
    }

    /// The rows at or after `since_ms` (all with `None`), oldest first.
    pub async fn audit(&self, since_ms: Option<i64>) -> Result<Vec<AuditRow>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM audit WHERE at_ms >= $1 ORDER BY id");
        let raws: Vec<RawRow> = on_pool!(self, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(since_ms.unwrap_or(i64::MIN))
                .fetch_all(pool)
                .await?
        });
        raws.into_iter().map(from_raw).collect()
    }

    /// Walks the whole chain; the first break, if any, and the number of rows checked.
    pub async fn verify_audit(&self) -> Result<(usize, Option<Tamper>), StoreError> {
        let rows = self.audit(None).await?;
        let mut previous: Option<&AuditRow> = None;
        for row in &rows {
            let expected_prev = previous.map_or(GENESIS, |p| p.hash.as_str());
            let follows = row.prev_hash == expected_prev
                && previous.map_or(row.id == 1, |p| row.id == p.id + 1);
            if row_hash(row.id, &row.prev_hash, &row.entry) != row.hash {
                return Ok((rows.len(), Some(Tamper::Edited { id: row.id })));
            }
            if !follows {
                return Ok((
                    rows.len(),
                    Some(Tamper::Broken {
                        id: row.id,
                        after: previous.map(|p| p.id),
                    }),
                ));
            }
            previous = Some(row);
        }
        Ok((rows.len(), None))
    }
}
