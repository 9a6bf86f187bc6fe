//! The Postgres source: a session of its own per run, on a connection the server's config
//! names (`[sources.NAME]`), never one of the server's pool; one read-only transaction, a
//! `statement_timeout` on every statement, rows through a cursor `BATCH_ROWS` at a time; the
//! session is closed at the run's end whatever happened, so nothing it did (advisory locks,
//! settings, temporary tables) outlives the run. A cancel, or the run ending, terminates the
//! session's backend (`pg_terminate_backend` from a second session of the same connection),
//! so even a query that never ends stops. Errors never show what the query read: see
//! `describe`.

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{Column, Connection, Row, TypeInfo, ValueRef};

use crate::config::SourceConnection;
use crate::pipeline::engine::{BadRow, Batch};
use crate::pipeline::error::PipelineError;
use crate::pipeline::source::{BATCH_ROWS, Item, Sender};
use crate::pipeline::value::{Type, Value};

/// How long connecting (the source's session, or the one that terminates it) may take.
const CONNECT_WITHIN: Duration = Duration::from_secs(30);
/// How long closing a session may take before its socket is simply dropped.
const CLOSE_WITHIN: Duration = Duration::from_secs(5);
/// How often a running statement looks at the run's cancel flag.
const CANCEL_POLL: Duration = Duration::from_millis(100);

/// Streams the rows of `query` read through `connection` (named `name`) into `tx`, until the
/// end, an error, `cancel`, or the run no longer taking rows.
pub async fn read(
    name: &str,
    connection: &SourceConnection,
    query: &str,
    tx: &mut Sender,
    cancel: &AtomicBool,
) -> Result<(), PipelineError> {
    let connect_error = |message: String| PipelineError::SourceConnect {
        connection: name.to_owned(),
        message,
    };
    let options = PgConnectOptions::from_str(&connection.url)
        .map_err(|e| connect_error(describe(&e, "")))?
        .application_name("etl-server source")
        .options([(
            "statement_timeout",
            format!("{}ms", connection.statement_timeout.as_millis()),
        )]);
    let mut session = tokio::select! {
        connected = tokio::time::timeout(CONNECT_WITHIN, PgConnection::connect_with(&options)) => {
            match connected {
                Ok(Ok(session)) => session,
                Ok(Err(e)) => return Err(connect_error(describe(&e, ""))),
                Err(_) => return Err(connect_error(format!("no session within {CONNECT_WITHIN:?}"))),
            }
        }
        () = canceled(cancel) => return Err(PipelineError::Canceled),
        () = tx.receiver_gone() => return Err(PipelineError::RunEnded),
    };
    let result = match sqlx::query_scalar::<_, i32>("SELECT pg_backend_pid()")
        .fetch_one(&mut session)
        .await
    {
        Err(e) => Err(PipelineError::SourceQuery(describe(&e, query))),
        Ok(pid) => {
            let gone = tx.receiver_gone();
            let stopped = tokio::select! {
                read = rows(&mut session, query, tx) => Ok(read),
                () = canceled(cancel) => Err(PipelineError::Canceled),
                () = gone => Err(PipelineError::RunEnded),
            };
            match stopped {
                Ok(read) => read,
                Err(why) => {
                    // The statement may never end by itself: end its backend.
                    terminate(&options, pid).await;
                    Err(why)
                }
            }
        }
    };
    // The session ends with the run, and everything it held with it.
    let _ = tokio::time::timeout(CLOSE_WITHIN, session.close()).await;
    result
}

/// Resolves once `cancel` is set.
async fn canceled(cancel: &AtomicBool) {
    while !cancel.load(Ordering::Relaxed) {
        tokio::time::sleep(CANCEL_POLL).await;
    }
}

/// Terminates backend `pid` from a second session of the same connection (the same role may
/// always signal its own backends).
async fn terminate(options: &PgConnectOptions, pid: i32) {
    let done = async {
        let mut killer = PgConnection::connect_with(options).await?;
        sqlx::query("SELECT pg_terminate_backend($1)")
            .bind(pid)
            .execute(&mut killer)
            .await?;
        killer.close().await
    };
    match tokio::time::timeout(CONNECT_WITHIN, done).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(
            pid,
            error = %describe(&e, ""),
            "could not terminate a stopped source's backend"
        ),
        Err(_) => tracing::warn!(
            pid,
            "could not terminate a stopped source's backend in time"
        ),
    }
}

/// The query through a cursor in one read-only transaction. The query is declared through the
/// extended protocol, so it is exactly one statement.
async fn rows(
    session: &mut PgConnection,
    query: &str,
    tx: &mut Sender,
) -> Result<(), PipelineError> {
    let pg = |e: sqlx::Error| PipelineError::SourceQuery(describe(&e, query));
    sqlx::raw_sql("BEGIN TRANSACTION READ ONLY")
        .execute(&mut *session)
        .await
        .map_err(pg)?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DECLARE fleet_source NO SCROLL CURSOR FOR {query}"
    )))
    .execute(&mut *session)
    .await
    .map_err(pg)?;
    let mut row_no = 0u64;
    let mut sent_columns = false;
    loop {
        let rows = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "FETCH {BATCH_ROWS} FROM fleet_source"
        )))
        .fetch_all(&mut *session)
        .await
        .map_err(pg)?;
        if !sent_columns {
            let (names, types) = match rows.first() {
                Some(r) => r
                    .columns()
                    .iter()
                    .map(|c| (c.name().to_owned(), pg_type(c.type_info().name())))
                    .unzip(),
                None => (Vec::new(), Vec::new()),
            };
            tx.send(Item::Columns(names, types)).await?;
            sent_columns = true;
        }
        if rows.is_empty() {
            break;
        }
        let mut batch = Batch::default();
        for row in &rows {
            row_no += 1;
            let mut values = Vec::with_capacity(row.len());
            let mut bad = None;
            for i in 0..row.len() {
                let raw = row.try_get_raw(i).map_err(pg)?;
                if raw.is_null() {
                    values.push(Value::Null);
                    continue;
                }
                let ty = pg_type(raw.type_info().name());
                let text = raw
                    .as_str()
                    .map_err(|e| PipelineError::SourceValue {
                        column: i + 1,
                        message: e.to_string(),
                    })?
                    .to_owned();
                match ty {
                    Some(ty) => match Value::Text(text.clone()).cast(ty) {
                        Ok(v) => values.push(v),
                        Err(why) => {
                            bad = Some(BadRow::new(
                                row_no,
                                Some(row.columns()[i].name().to_owned()),
                                why.to_string(),
                                text,
                            ));
                            break;
                        }
                    },
                    None => values.push(Value::Text(text)),
                }
            }
            match bad {
                Some(b) => batch.bad.push(b),
                None => batch.rows.push((row_no, values)),
            }
        }
        tx.send(Item::Batch(batch)).await?;
    }
    sqlx::raw_sql("ROLLBACK")
        .execute(&mut *session)
        .await
        .map_err(pg)?;
    Ok(())
}

/// The flow type a Postgres column type reads as (`None`: text).
fn pg_type(name: &str) -> Option<Type> {
    Some(match name {
        "INT2" | "INT4" | "INT8" => Type::Int,
        "FLOAT4" | "FLOAT8" => Type::Float,
        "NUMERIC" => Type::Decimal,
        "BOOL" => Type::Bool,
        "TIMESTAMPTZ" | "TIMESTAMP" => Type::Timestamp,
        "DATE" => Type::Date,
        _ => return None,
    })
}

/// A source's error as a run may record it. Postgres puts every value, name and path it
/// quotes in a message between double quotes (its message style), and the value it could not
/// read may be anything the query read (`pg_read_file(..)::int` quotes the file). So the
/// message keeps its text, the SQLSTATE is added, and everything from its first double quote
/// to its last becomes `"…"`, unless `query` itself contains that stretch (a column name the
/// author wrote, say: nothing the author did not know). The detail, hint and context, which
/// may quote more, are never shown. Other errors go through `db::describe` (no URL).
pub fn describe(e: &sqlx::Error, query: &str) -> String {
    let sqlx::Error::Database(db) = e else {
        return scrub(&crate::db::describe(e), query);
    };
    let message = scrub(db.message(), query);
    match db.code() {
        Some(code) => format!("{message} (SQLSTATE {code})"),
        None => message,
    }
}

/// `text` with the stretch from its first double quote to its last (or to its end, with only
/// one) replaced by `"…"`, unless `query` contains it.
fn scrub(text: &str, query: &str) -> String {
    let Some(first) = text.find('"') else {
        return text.to_owned();
    };
    let last = text.rfind('"').filter(|&l| l > first);
    let inner = &text[first + 1..last.unwrap_or(text.len())];
    if last.is_some() && !inner.is_empty() && query.contains(inner) {
        return text.to_owned();
    }
    let rest = last.map_or("", |l| &text[l + 1..]);
    format!("{}\"…\"{rest}", &text[..first])
}

#[cfg(test)]
mod tests {
    use super::scrub;

    #[test]
    fn quoted_stretches_are_kept_only_when_the_query_wrote_them() {
        let q = "SELECT nope FROM t";
        assert_eq!(
            scrub("column \"nope\" does not exist", q),
            "column \"nope\" does not exist"
        );
        assert_eq!(
            scrub("invalid input syntax for type integer: \"root:x:0:0\"", q),
            "invalid input syntax for type integer: \"…\""
        );
        // Quotes inside the value cannot split it into kept parts.
        assert_eq!(
            scrub("invalid input syntax for type integer: \"a\" nope \"b\"", q),
            "invalid input syntax for type integer: \"…\""
        );
        // One quote: the rest of the message may be the value.
        assert_eq!(scrub("bad value: \"secret and more", q), "bad value: \"…\"");
        assert_eq!(scrub("division by zero", q), "division by zero");
    }
}
