//! glibc's allocator settings, made once at start, before any thread exists.
//!
//! Draining a backlog, the process holds many short-lived buffers at once: librdkafka's fetched
//! records, the batches' copies of them, their planned writes. With glibc's defaults every thread
//! that allocates gets its own arena (up to eight per core), and buffers above the mmap threshold
//! raise that threshold (up to 32 MiB), so freed fetch buffers stay in the arenas as fragments.
//! One arena, and buffers of 64 KiB and more mapped and returned to the system when freed, keep
//! the peak resident set about 15 MiB lower at the same write rate (see the benchmark journal,
//! `crates/bench/README.md`).
//!
//! glibc's own variables (`MALLOC_ARENA_MAX`, `MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_`)
//! still decide: a setting whose variable is set is left as glibc read it.

/// One allocator setting and its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    /// glibc's environment variable for it.
    pub variable: &'static str,
    pub value: i32,
}

/// What [`tune`] sets when the environment does not: one arena, and mapping and trimming from
/// 64 KiB.
pub const SETTINGS: [Setting; 3] = [
    Setting {
        variable: "MALLOC_ARENA_MAX",
        value: 1,
    },
    Setting {
        variable: "MALLOC_MMAP_THRESHOLD_",
        value: 64 * 1024,
    },
    Setting {
        variable: "MALLOC_TRIM_THRESHOLD_",
        value: 64 * 1024,
    },
];

/// Applies [`SETTINGS`] not overridden by the environment; returns the settings applied (none
/// where the allocator is not glibc's). Call it first in `main`, before any thread is started.
pub fn tune() -> Vec<Setting> {
    SETTINGS
        .into_iter()
        .filter(|setting| std::env::var_os(setting.variable).is_none())
        .filter(apply)
        .collect()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn apply(setting: &Setting) -> bool {
    let parameter = match setting.variable {
        "MALLOC_ARENA_MAX" => libc::M_ARENA_MAX,
        "MALLOC_MMAP_THRESHOLD_" => libc::M_MMAP_THRESHOLD,
        "MALLOC_TRIM_THRESHOLD_" => libc::M_TRIM_THRESHOLD,
        _ => return false,
    };
    // SAFETY: `mallopt` only changes the allocator's parameters, under its own lock; it reads
    // nothing of ours. glibc returns 1 on success, 0 for a value it refuses.
    #[allow(unsafe_code)]
    let applied = unsafe { libc::mallopt(parameter, setting.value) };
    applied == 1
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn apply(_setting: &Setting) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glibc_takes_every_setting() {
        let unset: Vec<Setting> = SETTINGS
            .into_iter()
            .filter(|setting| std::env::var_os(setting.variable).is_none())
            .collect();
        let applied = tune();
        if cfg!(all(target_os = "linux", target_env = "gnu")) {
            assert_eq!(applied, unset);
        } else {
            assert!(applied.is_empty());
        }
    }
}
