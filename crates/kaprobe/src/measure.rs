//! Running an HTTP measurement: the async runtime, and a report printed as JSON or rendered.

use std::process::ExitCode;
use std::time::Duration;

use crate::exit::http_failure;
use crate::out::print_json_line;

/// The runtime every prober command uses (two worker threads: the machine may be small).
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// Run one measurement to its end and print its report: one JSON line, or `render`.
pub fn measure<R: serde::Serialize>(
    fut: impl std::future::Future<Output = Result<R, kaprobe_http::Error>>,
    json: bool,
    render: fn(&R) -> anyhow::Result<()>,
) -> anyhow::Result<ExitCode> {
    let rt = runtime()?;
    let result = rt.block_on(fut);
    // A resolver thread stuck on a slow DNS server must not hold the exit past --max-wait.
    rt.shutdown_timeout(Duration::from_millis(100));
    let report = result.map_err(http_failure)?;
    if json {
        print_json_line(&serde_json::to_value(&report)?)?;
    } else {
        render(&report)?;
    }
    Ok(ExitCode::SUCCESS)
}
