//! Runs: flows and runs in Postgres (`store`), and the executor that claims queued runs and
//! runs them (`executor`). Knows nothing of HTTP or Redis.

mod executor;
mod store;

pub use executor::Executor;
pub use store::*;
