//! The keep-alive server behind `kaprobe serve`.
