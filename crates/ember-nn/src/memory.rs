//! How much memory the machine has left, so that sizes read from a file or a flag can be
//! refused before an allocation the process cannot survive (a failed allocation aborts).

/// Bytes of memory available to new allocations: Linux's `MemAvailable` plus free swap,
/// capped by the process's address-space limit. `None` where it cannot be read.
pub fn available_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| {
        meminfo.lines().find_map(|line| {
            let rest = line.strip_prefix(name)?.strip_prefix(':')?;
            let kb: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
            Some(kb * 1024)
        })
    };
    let available = field("MemAvailable")?.saturating_add(field("SwapFree").unwrap_or(0));
    Some(available.min(address_space_limit().unwrap_or(u64::MAX)))
}

/// `RLIMIT_AS` when one is set (`ulimit -v`).
fn address_space_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max address space"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Fails with a message naming `what` when `bytes` exceed the memory available.
pub fn check_fits(what: &str, bytes: f64) -> Result<(), String> {
    match available_bytes() {
        Some(available) if bytes > available as f64 => Err(format!(
            "{what} would need {} of memory, but only {} is available",
            human_bytes(bytes),
            human_bytes(available as f64)
        )),
        _ => Ok(()),
    }
}

/// `1.5 GiB`, `320 MiB`, `12 KiB`, `7 B`.
pub fn human_bytes(bytes: f64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut value = bytes;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{value:.0} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_machines_memory() {
        let available = available_bytes().expect("/proc/meminfo on Linux");
        assert!(available > 1 << 20, "{available}");
        assert!(check_fits("a tiny buffer", 1024.0).is_ok());
        let err = check_fits("--max-new-tokens", 1e30).unwrap_err();
        assert!(err.starts_with("--max-new-tokens would need"), "{err}");
        assert_eq!(human_bytes(1536.0 * 1024.0 * 1024.0), "1.5 GiB");
    }
}
