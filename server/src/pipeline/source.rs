//! Sources: read rows in batches from a CSV or JSON-lines file on shared storage (a Postgres
//! query is `pg_source`'s), never the whole input at once, and send them to the run through a
//! `Sender`. A row that cannot be read is passed on as a bad row (with its line), not
//! dropped; a source that cannot go on ends the run with a `PipelineError`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::pipeline::engine::{BadRow, Batch, Plan};
use crate::pipeline::error::PipelineError;
use crate::pipeline::value::{Type, Value};

/// Rows per batch: large enough that per-batch costs vanish, small enough for flat memory.
pub const BATCH_ROWS: usize = 2048;

/// What a source sends: first its columns, then batches.
pub enum Item {
    Columns(Vec<String>, Vec<Option<Type>>),
    Batch(Batch),
}

/// Where a source sends: the run's channel, and the transform plan, which the run makes once
/// it has the columns. Batches are transformed on the source's own thread before they are
/// sent, so most values are freed where they were made.
pub struct Sender {
    tx: mpsc::Sender<Result<Item, PipelineError>>,
    plan: Option<oneshot::Receiver<Arc<Plan>>>,
    ready: Option<Arc<Plan>>,
}

impl Sender {
    pub fn new(
        tx: mpsc::Sender<Result<Item, PipelineError>>,
        plan: oneshot::Receiver<Arc<Plan>>,
    ) -> Self {
        Self {
            tx,
            plan: Some(plan),
            ready: None,
        }
    }

    fn transform(&self, item: Item) -> Item {
        match (item, &self.ready) {
            (Item::Batch(b), Some(plan)) => {
                Item::Batch(crate::pipeline::engine::transform(plan, b))
            }
            (item, _) => item,
        }
    }

    /// Sends an item from a blocking thread; after the columns, waits for the plan.
    fn send_blocking(&mut self, item: Item) -> Result<(), PipelineError> {
        let is_columns = matches!(item, Item::Columns(..));
        let item = self.transform(item);
        self.tx
            .blocking_send(Ok(item))
            .map_err(|_| PipelineError::RunEnded)?;
        if is_columns && let Some(rx) = self.plan.take() {
            self.ready = Some(rx.blocking_recv().map_err(|_| PipelineError::RunEnded)?);
        }
        Ok(())
    }

    /// Sends an item from a task; after the columns, waits for the plan.
    pub(crate) async fn send(&mut self, item: Item) -> Result<(), PipelineError> {
        let is_columns = matches!(item, Item::Columns(..));
        let item = self.transform(item);
        self.tx
            .send(Ok(item))
            .await
            .map_err(|_| PipelineError::RunEnded)?;
        if is_columns && let Some(rx) = self.plan.take() {
            self.ready = Some(rx.await.map_err(|_| PipelineError::RunEnded)?);
        }
        Ok(())
    }

    /// Resolves once the run takes no more rows (it ended); holds no borrow of `self`.
    pub(crate) fn receiver_gone(&self) -> impl Future<Output = ()> + Send + use<> {
        let tx = self.tx.clone();
        async move { tx.closed().await }
    }

    /// Reports the source's own failure (not the run ending) to the run.
    pub fn fail_blocking(&self, e: PipelineError) {
        if !matches!(e, PipelineError::RunEnded) {
            let _ = self.tx.blocking_send(Err(e));
        }
    }

    pub async fn fail(&self, e: PipelineError) {
        if !matches!(e, PipelineError::RunEnded) {
            let _ = self.tx.send(Err(e)).await;
        }
    }
}

/// Reads a CSV file (blocking: run it on a blocking thread).
pub fn csv(
    file: std::fs::File,
    delimiter: u8,
    quote: u8,
    header: bool,
    tx: &mut Sender,
) -> Result<(), PipelineError> {
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .quote(quote)
        .has_headers(false)
        .flexible(true)
        .buffer_capacity(1 << 20)
        .from_reader(file);
    let mut record = csv::ByteRecord::new();
    let mut columns: Vec<String> = Vec::new();
    let mut batch = Batch::default();
    let mut first = true;
    loop {
        match reader.read_byte_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                let line = e.position().map_or(0, |p| p.line());
                let reason = e.to_string();
                // Only I/O errors end reading; a malformed record is one bad row.
                if let csv::ErrorKind::Io(io) = e.into_kind() {
                    return Err(PipelineError::ReadSource {
                        format: "CSV",
                        error: Arc::new(io),
                    });
                }
                batch
                    .bad
                    .push(BadRow::new(line, None, reason, String::new()));
                continue;
            }
        }
        let line = record.position().map_or(0, |p| p.line());
        if first {
            first = false;
            if header {
                for (i, field) in record.iter().enumerate() {
                    let name = std::str::from_utf8(field)
                        .map_err(|_| PipelineError::HeaderNotUtf8 {
                            line,
                            column: i + 1,
                        })?
                        .trim()
                        .to_owned();
                    if name.is_empty() {
                        return Err(PipelineError::HeaderEmpty {
                            line,
                            column: i + 1,
                        });
                    }
                    if columns.contains(&name) {
                        return Err(PipelineError::HeaderTwice { line, name });
                    }
                    columns.push(name);
                }
                send(
                    tx,
                    Item::Columns(columns.clone(), vec![None; columns.len()]),
                )?;
                continue;
            }
            columns = (1..=record.len()).map(|i| format!("c{i}")).collect();
            send(
                tx,
                Item::Columns(columns.clone(), vec![None; columns.len()]),
            )?;
        }
        if record.len() != columns.len() {
            batch.bad.push(BadRow::new(
                line,
                None,
                format!("{} fields, the header has {}", record.len(), columns.len()),
                raw_line(&record),
            ));
        } else {
            let mut values = Vec::with_capacity(columns.len());
            let mut bad = None;
            for (i, field) in record.iter().enumerate() {
                match std::str::from_utf8(field) {
                    Ok(s) => values.push(Value::Raw(s.to_owned())),
                    Err(_) => {
                        bad = Some(BadRow::new(
                            line,
                            Some(columns[i].clone()),
                            "not valid UTF-8".into(),
                            raw_line(&record),
                        ));
                        break;
                    }
                }
            }
            match bad {
                Some(b) => batch.bad.push(b),
                None => batch.rows.push((line, values)),
            }
        }
        if batch.rows.len() >= BATCH_ROWS {
            send(tx, Item::Batch(std::mem::take(&mut batch)))?;
        }
    }
    if first {
        send(tx, Item::Columns(columns, Vec::new()))?;
    }
    send(tx, Item::Batch(batch))
}

fn raw_line(record: &csv::ByteRecord) -> String {
    record
        .iter()
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .collect::<Vec<_>>()
        .join(",")
}

/// The longest JSON line read; a longer one is a bad row.
pub const MAX_LINE: usize = 16 << 20;

/// Reads a JSON-lines file: one object per line; the columns are the first object's keys.
pub fn jsonl(file: std::fs::File, tx: &mut Sender) -> Result<(), PipelineError> {
    let read_error = |e: std::io::Error| PipelineError::ReadSource {
        format: "JSON-lines",
        error: Arc::new(e),
    };
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut columns: Option<HashMap<String, usize>> = None;
    let mut batch = Batch::default();
    let mut line_no = 0u64;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut buf)
            .map_err(read_error)?;
        if n == 0 {
            break;
        }
        line_no += 1;
        if buf.len() > MAX_LINE {
            batch.bad.push(BadRow::new(
                line_no,
                None,
                format!("line longer than {MAX_LINE} bytes"),
                String::new(),
            ));
            // Skip the rest of the line.
            let mut rest = Vec::new();
            reader.read_until(b'\n', &mut rest).map_err(read_error)?;
            continue;
        }
        let text = String::from_utf8_lossy(&buf);
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        let object = match serde_json::from_str::<Line>(text) {
            Ok(Line::Object(o)) => o,
            Ok(Line::Other(other)) => {
                batch.bad.push(BadRow::new(
                    line_no,
                    None,
                    format!("expected a JSON object, found {}", json_kind(&other)),
                    text.to_owned(),
                ));
                continue;
            }
            Err(e) => {
                batch.bad.push(BadRow::new(
                    line_no,
                    None,
                    format!("invalid JSON: {e}"),
                    text.to_owned(),
                ));
                continue;
            }
        };
        let index = match &columns {
            Some(c) => c,
            None => {
                let names: Vec<String> = object.iter().map(|(k, _)| k.clone()).collect();
                send(tx, Item::Columns(names.clone(), vec![None; names.len()]))?;
                columns.insert(names.into_iter().enumerate().map(|(i, n)| (n, i)).collect())
            }
        };
        let mut values = vec![Value::Null; index.len()];
        let mut bad = None;
        for (k, v) in object {
            match index.get(&k) {
                Some(&i) => values[i] = Value::from_json(v),
                None => {
                    bad = Some(BadRow::new(
                        line_no,
                        Some(k.clone()),
                        format!("key `{k}` is not in the first line's keys"),
                        text.to_owned(),
                    ));
                    break;
                }
            }
        }
        match bad {
            Some(b) => batch.bad.push(b),
            None => batch.rows.push((line_no, values)),
        }
        if batch.rows.len() >= BATCH_ROWS {
            send(tx, Item::Batch(std::mem::take(&mut batch)))?;
        }
    }
    if columns.is_none() {
        send(tx, Item::Columns(Vec::new(), Vec::new()))?;
    }
    send(tx, Item::Batch(batch))
}

/// One line of a JSON-lines file: an object with its keys in the order written (serde_json's
/// map would sort them), or anything else.
enum Line {
    Object(Vec<(String, serde_json::Value)>),
    Other(serde_json::Value),
}

impl<'de> serde::Deserialize<'de> for Line {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Line;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Line, A::Error> {
                let mut out: Vec<(String, serde_json::Value)> = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, serde_json::Value>()? {
                    if out.iter().any(|(seen, _)| *seen == k) {
                        return Err(serde::de::Error::custom(format!("key `{k}` appears twice")));
                    }
                    out.push((k, v));
                }
                Ok(Line::Object(out))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Line, A::Error> {
                let v = serde::Deserialize::deserialize(
                    serde::de::value::SeqAccessDeserializer::new(seq),
                )?;
                Ok(Line::Other(serde_json::Value::Array(v)))
            }
            fn visit_bool<E>(self, b: bool) -> Result<Line, E> {
                Ok(Line::Other(b.into()))
            }
            fn visit_i64<E>(self, n: i64) -> Result<Line, E> {
                Ok(Line::Other(n.into()))
            }
            fn visit_u64<E>(self, n: u64) -> Result<Line, E> {
                Ok(Line::Other(n.into()))
            }
            fn visit_f64<E>(self, n: f64) -> Result<Line, E> {
                Ok(Line::Other(n.into()))
            }
            fn visit_str<E>(self, s: &str) -> Result<Line, E> {
                Ok(Line::Other(s.into()))
            }
            fn visit_unit<E>(self) -> Result<Line, E> {
                Ok(Line::Other(serde_json::Value::Null))
            }
        }
        d.deserialize_any(V)
    }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Sends from a blocking thread; a closed channel means the run ended (failed or canceled):
/// stop reading.
fn send(tx: &mut Sender, item: Item) -> Result<(), PipelineError> {
    tx.send_blocking(item)
}
