//! Progress reports from long operations, for a progress bar or a log.

/// Receives progress from a long operation. Called from async tasks and worker threads, so
/// implementations must be cheap and must not block.
pub trait Progress: Send + Sync {
    /// The operation has started and will cover `total` bytes.
    fn start(&self, total: u64) {
        let _ = total;
    }

    /// `bytes` more have been processed.
    fn advance(&self, bytes: u64) {
        let _ = bytes;
    }

    /// Something a person watching should know, such as what the operation waits for.
    fn note(&self, message: &str) {
        let _ = message;
    }
}

/// Progress that goes nowhere.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {}
