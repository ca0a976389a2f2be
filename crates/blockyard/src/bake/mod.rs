//! `blockyard bake`: runs the pipelines of a pipeline file, and reports on each run.

pub(crate) mod report;
