//! Live TCP sockets and their timers through the sock_diag netlink interface (NETLINK_SOCK_DIAG, inet_diag).
