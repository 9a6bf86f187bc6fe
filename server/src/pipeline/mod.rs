//! The pipeline of one run: a flow's definition (`flow`), its expressions (`expr`) over typed
//! values (`value`), paths on shared storage (`storage`), a source (`source`; a Postgres query
//! through a session of its own: `pg_source`), the transform
//! plan and bad-row policies (`engine`) and a destination (`sink`). Rows move in bounded
//! batches through bounded channels. Its errors (`error`): `PipelineError` ends a run,
//! `StorageError` refuses a path, `CastError` and `EvalError` make a row bad. Knows nothing of
//! runs' bookkeeping, the cluster or HTTP.

pub(crate) mod engine;
pub(crate) mod error;
pub(crate) mod expr;
pub(crate) mod flow;
pub(crate) mod pg_source;
pub(crate) mod sink;
pub(crate) mod source;
pub(crate) mod storage;
pub(crate) mod value;

pub use error::StorageError;
pub use flow::Flow;
