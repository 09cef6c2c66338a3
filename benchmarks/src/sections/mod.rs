//! One module per measurement; each returns its results for the report.

pub(crate) mod latency;
pub(crate) mod memory;
pub(crate) mod query;
pub(crate) mod replay;
pub(crate) mod scale;
pub(crate) mod settings;
pub(crate) mod write;
