//! Keep-alive options on one socket: validate, set, read back.
