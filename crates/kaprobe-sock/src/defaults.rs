//! System keep-alive defaults from /proc/sys/net/ipv4.
