//! Runs: flows and runs in Postgres (`store`), the states of a run (`state`), the store's
//! `RunsError` (`error`), and the executor that claims queued runs and runs them
//! (`executor`). Knows nothing of HTTP or Redis.

mod error;
mod executor;
mod state;
mod store;

pub use error::RunsError;
pub use executor::Executor;
pub use state::RunState;
pub use store::*;
