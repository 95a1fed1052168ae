//! Why bytes from the wire were refused.

/// Why a request (or its body) was rejected: the status to answer with and a short reason
/// for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reject {
    pub status: u16,
    pub detail: &'static str,
}

/// A 400 for `detail`.
pub(crate) const fn bad(detail: &'static str) -> Reject {
    Reject {
        status: 400,
        detail,
    }
}
