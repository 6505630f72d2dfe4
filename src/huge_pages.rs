//! Whether the process may use transparent huge pages (`server.transparent_huge_pages`). mimalloc
//! asks for huge pages for its arenas where the system allows them on request (`madvise`); a huge page
//! is resident as soon as one byte of it is touched, so per-thread heaps and partly filled arenas held
//! tens of megabytes more than the merchants needed. The flag is the process's (`PR_SET_THP_DISABLE`),
//! so it covers the allocator without configuring it.

/// Allows or forbids transparent huge pages for memory the process faults in from now on.
#[cfg(target_os = "linux")]
pub fn allow(allowed: bool) -> std::io::Result<()> {
    rustix::thread::disable_transparent_huge_pages(!allowed).map_err(std::io::Error::from)
}

/// Other systems have no per-process switch; the setting is theirs.
#[cfg(not(target_os = "linux"))]
pub fn allow(_allowed: bool) -> std::io::Result<()> {
    Ok(())
}
