//! A throwaway CA and a server certificate for 127.0.0.1, made with the `openssl` command,
//! for the TLS tests.

#![allow(dead_code, unreachable_pub)]

use std::path::Path;
use std::process::Command;

fn run(dir: &Path, args: &[&str]) -> Result<(), String> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .map_err(|e| format!("openssl: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Makes a CA (`ca.crt`) and a server certificate (`server.crt`, `server.key`) for
/// 127.0.0.1 in `dir`.
pub fn certificates(dir: &Path) -> Result<(), String> {
    let days = ["-days", "2"];
    run(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-subj",
            "/CN=channel-layer test CA",
            days[0],
            days[1],
        ],
    )?;
    run(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    )?;
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n")
        .map_err(|e| e.to_string())?;
    run(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-extfile",
            "san.ext",
            days[0],
            days[1],
        ],
    )
}
