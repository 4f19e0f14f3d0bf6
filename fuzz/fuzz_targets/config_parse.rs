//! Parses arbitrary text as an endpoint configuration file. Checks that parsing and validation
//! never panic (errors are fine), that error messages can be printed, and that parsing is
//! deterministic.
//!
//! The text is tried on its own, and appended to a valid `[endpoint]` table so that the fuzzer
//! reaches the validation of routes, target networks and authorization rules quickly.
#![no_main]

use gateway::config::EndpointConfig;
use libfuzzer_sys::fuzz_target;

const BASE: &str = "[endpoint]\n\
    client_cidr = \"10.2.0.0/22\"\n\
    server_cert = \"/etc/cvpn/server.crt\"\n\
    server_key = \"/etc/cvpn/server.key\"\n\
    client_ca = \"/etc/cvpn/ca.crt\"\n";

fn check(text: &str) {
    match EndpointConfig::from_toml_str(text) {
        Ok(config) => {
            let _ = config.policy(|name| name.len() as u32);
            let _ = config.groups();
            let _ = config.route_destinations().count();
            for t in &config.target_networks {
                assert_eq!(config.target_network(&t.interface), Some(t));
            }
            assert_eq!(EndpointConfig::from_toml_str(text).ok(), Some(config));
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    check(&text);
    check(&format!("{BASE}{text}"));
});
