//! TCP_INFO: the kernel counters of one socket.
