//! kaprobe-capture
