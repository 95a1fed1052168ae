//! Which processes hold a socket, as `ss -p` shows it: every `/proc/PID/fd/N` that is a link
//! to `socket:[INODE]` names an owner (pid, command, descriptor number). The command is the
//! kernel's short name (`/proc/PID/comm`, at most 15 bytes), the one `ss` prints.
//!
//! Without root only the caller's own processes can be read; the others are skipped, as by
//! `ss`. Processes that exit during the scan are skipped too.

use std::collections::HashMap;
use std::path::Path;

/// One process holding a socket.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Owner {
    pub pid: u32,
    /// `/proc/PID/comm`: the kernel's short command name.
    pub command: String,
    /// The descriptor number in that process.
    pub fd: u32,
}

/// Socket inode -> the processes that hold it, in pid then fd order.
#[derive(Debug, Default, Clone)]
pub struct Owners {
    map: HashMap<u32, Vec<Owner>>,
}

impl Owners {
    /// Scan `/proc` once.
    pub fn scan() -> Self {
        Self::scan_root(Path::new("/proc"))
    }

    /// Scan a proc file system mounted at `root`.
    pub fn scan_root(root: &Path) -> Self {
        let mut map: HashMap<u32, Vec<Owner>> = HashMap::new();
        let Ok(dir) = std::fs::read_dir(root) else {
            return Self { map };
        };
        let mut link = Vec::with_capacity(64);
        for ent in dir.flatten() {
            let Some(pid) = ent.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let pdir = ent.path();
            let Ok(fds) = std::fs::read_dir(pdir.join("fd")) else {
                continue;
            };
            let mut command: Option<String> = None;
            for fd in fds.flatten() {
                let Some(n) = fd.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                    continue;
                };
                let Ok(target) = std::fs::read_link(fd.path()) else {
                    continue;
                };
                link.clear();
                link.extend_from_slice(target.as_os_str().as_encoded_bytes());
                let Some(inode) = socket_inode(&link) else {
                    continue;
                };
                let command = command
                    .get_or_insert_with(|| {
                        std::fs::read_to_string(pdir.join("comm"))
                            .map(|s| s.trim_end_matches('\n').to_string())
                            .unwrap_or_default()
                    })
                    .clone();
                map.entry(inode).or_default().push(Owner {
                    pid,
                    command,
                    fd: n,
                });
            }
        }
        for v in map.values_mut() {
            v.sort_by_key(|o| (o.pid, o.fd));
        }
        Self { map }
    }

    /// The processes holding socket `inode` (none for inode 0: TIME-WAIT, request sockets).
    pub fn of(&self, inode: u32) -> &[Owner] {
        if inode == 0 {
            return &[];
        }
        self.map.get(&inode).map_or(&[], Vec::as_slice)
    }
}

/// `socket:[12345]` -> 12345.
fn socket_inode(link: &[u8]) -> Option<u32> {
    let inner = link.strip_prefix(b"socket:[")?.strip_suffix(b"]")?;
    std::str::from_utf8(inner).ok()?.parse().ok()
}

/// Owners the way `ss -p` writes them: `users:(("nginx",pid=10,fd=6),("nginx",pid=11,fd=6))`.
pub fn ss_users(owners: &[Owner]) -> String {
    let list: Vec<String> = owners
        .iter()
        .map(|o| format!("(\"{}\",pid={},fd={})", o.command, o.pid, o.fd))
        .collect();
    format!("users:({})", list.join(","))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn socket_links_are_read_and_others_ignored() {
        assert_eq!(socket_inode(b"socket:[4242]"), Some(4242));
        assert_eq!(socket_inode(b"pipe:[4242]"), None);
        assert_eq!(socket_inode(b"socket:[x]"), None);
        assert_eq!(socket_inode(b"socket:[12"), None);
    }

    #[test]
    fn this_process_owns_its_listener() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut inode = 0;
        let port = l.local_addr().unwrap().port();
        crate::diag::visit(
            &crate::diag::Filter {
                port: Some(port),
                states: crate::diag::States::ALL,
                ..Default::default()
            },
            |e| inode = e.inode,
        )
        .unwrap();
        assert_ne!(inode, 0);
        let owners = Owners::scan();
        let me = owners.of(inode);
        assert_eq!(me.len(), 1, "{me:?}");
        assert_eq!(me[0].pid, std::process::id());
        assert_eq!(i32::try_from(me[0].fd).unwrap(), l.as_raw_fd());
        assert!(ss_users(me).starts_with("users:((\""), "{}", ss_users(me));
        assert!(owners.of(0).is_empty());
    }
}
