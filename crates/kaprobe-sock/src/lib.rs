//! kaprobe-sock
