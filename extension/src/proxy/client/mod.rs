//! The client side of the proxy: per-connection timeouts and guarded I/O ([`limits`]), and
//! the connection slots that cap how many clients are served at once ([`slots`]).

pub(crate) mod limits;
pub(crate) mod slots;
