//! Parses arbitrary text as the daemon configuration (`cvpn serve --config`). Checks that
//! parsing never panics, that errors print, that accepted values are in their ranges, and that
//! parsing is deterministic.
#![no_main]

use gateway::control::config::{is_endpoint_file, DaemonConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = is_endpoint_file(&text);
    match DaemonConfig::parse(&text, "fuzz.toml") {
        Ok(c) => {
            assert!(c.ping >= 1 && c.ping_restart >= 2 * c.ping);
            assert!(c.counters_every.as_secs() >= 1 && c.retention.as_secs() >= 60);
            assert_eq!(DaemonConfig::parse(&text, "fuzz.toml").ok(), Some(c));
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
