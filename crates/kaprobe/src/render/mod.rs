//! Rendering shared by commands: capture results (`read`, `watch`) and HTTP reports
//! (`probe`, `demo`).

pub mod capture;
pub mod html;
pub mod http;
