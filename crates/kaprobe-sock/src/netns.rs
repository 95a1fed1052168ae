//! A private network namespace for one thread: its own loopback, its own firewall, gone when
//! the work is done. Lets `kaprobe demo` (as root) show a silently dead peer without touching
//! the host's network.

use std::io;

use crate::error::{Error, Result};

/// Run `f` on a new thread inside a fresh network namespace whose `lo` is up. Sockets made
/// and processes spawned by `f` live in that namespace; it disappears when they are gone.
/// Needs CAP_SYS_ADMIN (root).
pub fn in_private_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let handle = std::thread::spawn(move || -> Result<T> {
        // SAFETY: unshare takes a flag word and only changes this thread's namespaces.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(Error::io(
                "create a private network namespace (unshare CLONE_NEWNET)",
                io::Error::last_os_error(),
            ));
        }
        loopback_up()?;
        Ok(f())
    });
    handle.join().unwrap_or_else(|_| {
        Err(Error::Parse {
            what: "run in a private network namespace".into(),
            detail: "the worker thread panicked".into(),
        })
    })
}

/// Where `ip netns add NAME` keeps its namespaces.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// Check a `--netns` name the way `ip netns` does: not empty, no `/`, not `.` or `..`.
pub fn check_netns_name(name: &str) -> Result<()> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." || name.contains('\0') {
        return Err(Error::Invalid {
            flag: "--netns".into(),
            value: name.into(),
            reason: format!(
                "a namespace name as `ip netns list` shows it (a file in {NETNS_RUN_DIR})"
            ),
        });
    }
    Ok(())
}

/// Run `f` on a new thread that joined the named network namespace (`/run/netns/NAME`, as
/// made by `ip netns add NAME`, like `ss -N NAME`), and return its result; the calling
/// thread never leaves its own namespace. Threads `f` spawns inherit the namespace. Needs
/// CAP_SYS_ADMIN (root).
pub fn in_named_netns<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
    use std::os::fd::AsRawFd;
    check_netns_name(name)?;
    let path = std::path::Path::new(NETNS_RUN_DIR).join(name);
    let file = std::fs::File::open(&path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            Error::Invalid {
                flag: "--netns".into(),
                value: name.into(),
                reason: format!("no such network namespace ({} does not exist; `ip netns list` shows the names)", path.display()),
            }
        } else {
            Error::io(format!("open the network namespace {}", path.display()), e)
        }
    })?;
    std::thread::scope(|scope| {
        let h = scope.spawn(|| -> Result<T> {
            // SAFETY: setns on an open namespace file changes only this thread's network
            // namespace; the file stays open for the call.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(Error::io(
                    format!("join the network namespace {} (setns)", path.display()),
                    io::Error::last_os_error(),
                ));
            }
            Ok(f())
        });
        h.join().unwrap_or_else(|_| {
            Err(Error::Parse {
                what: format!("work in the network namespace {name}"),
                detail: "the worker thread panicked".into(),
            })
        })
    })
}

/// Bring `lo` up in the calling thread's network namespace.
fn loopback_up() -> Result<()> {
    let what = "bring up lo in the private namespace";
    // SAFETY: plain socket(2) call; the descriptor is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(Error::io(what, io::Error::last_os_error()));
    }
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = libc::c_char::from_ne_bytes([*src]);
    }
    // SAFETY: `fd` is a valid socket and `req` a valid ifreq naming `lo`; SIOCGIFFLAGS fills
    // the flags member of the union, which we then read and write back with IFF_UP.
    let rc = unsafe {
        if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) == 0 {
            req.ifr_ifru.ifru_flags |= libc::c_short::try_from(libc::IFF_UP).unwrap_or(1);
            libc::ioctl(fd, libc::SIOCSIFFLAGS, &req)
        } else {
            -1
        }
    };
    let err = io::Error::last_os_error();
    // SAFETY: `fd` was returned by socket(2) above and is closed once.
    unsafe { libc::close(fd) };
    if rc != 0 {
        return Err(Error::io(what, err));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_and_missing_namespace_names_are_one_line_errors() {
        for bad in ["", "a/b", "..", "."] {
            let e = in_named_netns(bad, || ()).unwrap_err().to_string();
            assert!(e.contains("--netns") && !e.contains('\n'), "{e}");
        }
        let e = in_named_netns("kaprobe-no-such-namespace", || ())
            .unwrap_err()
            .to_string();
        assert!(e.contains("no such network namespace"), "{e}");
    }

    #[test]
    fn private_namespace_has_a_working_loopback_of_its_own() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root");
            return;
        }
        let host_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = host_listener.local_addr().unwrap().port();
        let r = in_private_netns(move || {
            // the host's listener is not visible here; a new one works
            let refused = std::net::TcpStream::connect(("127.0.0.1", port)).is_err();
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let ok = std::net::TcpStream::connect(l.local_addr().unwrap()).is_ok();
            (refused, ok)
        })
        .unwrap();
        assert_eq!(r, (true, true));
    }
}
