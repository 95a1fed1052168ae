//! The keep-alive prober: measures what a server or proxy does with idle connections.
