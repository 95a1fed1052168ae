//! Small helpers shared by commands: durations as kaprobe writes them, the stop flag,
//! stdout that ends quietly when its reader goes away, JSON lines, a child-process guard.

use std::time::Duration;

/// Seconds as a float, the unit every JSON duration uses.
pub fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// A duration the one way kaprobe writes it: `250ms`, `2.5s`, `15m24.6s`, `2h11m15s`.
pub fn human(d: Duration) -> String {
    kaprobe_sock::fmt::duration(d)
}

/// A flag that becomes true on SIGINT or SIGTERM, so a command can stop and summarise.
pub fn stop_flag() -> anyhow::Result<std::sync::Arc<std::sync::atomic::AtomicBool>> {
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, std::sync::Arc::clone(&flag))?;
    }
    Ok(flag)
}

/// A child process (a `kaprobe serve` a command started for itself) stopped when dropped:
/// SIGTERM, up to 3s to exit, then SIGKILL; always reaped.
pub struct ChildGuard(pub std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(pid) = libc::pid_t::try_from(self.0.id()) {
            // SAFETY: kill(2) on our own child's pid; it has not been reaped yet.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while std::time::Instant::now() < deadline {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
