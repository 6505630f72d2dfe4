//! `merchant-edge snapshot inspect FILE`: what a snapshot file says about itself, with every record and
//! the checksum verified, for an SRE deciding whether a restart will resume from it.
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use super::format::{self, Verified};
use super::loader::{self, LoadError};

/// Reads and verifies the whole file; the report on success, or what is wrong (with the header, when
/// it could be read).
pub fn verify(path: &Path) -> Result<Verified, Box<(Option<format::Header>, LoadError)>> {
    let mut input = loader::open(path).map_err(|error| Box::new((None, error)))?;
    let header = format::read_header(&mut input, None).map_err(|rejected| Box::new((None, rejected.into())))?;
    format::read_records(input, header.clone(), |_, _| {}).map_err(|rejected| Box::new((Some(header), rejected.into())))
}

fn print_header(header: &format::Header) {
    let written_at =
        SystemTime::UNIX_EPOCH + Duration::from_millis(u64::try_from(header.written_at_unix_ms).unwrap_or(0));
    let age = SystemTime::now().duration_since(written_at).unwrap_or_default();
    let age = humantime_serde::re::humantime::format_duration(Duration::from_secs(age.as_secs()));
    println!("  format:      merchant-edge snapshot, version {}", format::FORMAT_VERSION);
    println!("  sequence:    {}", header.sequence);
    println!("  incarnation: {}", header.incarnation);
    println!("  written at:  {} ({age} ago)", humantime_serde::re::humantime::format_rfc3339_millis(written_at));
    println!("  written by:  {}", header.written_by);
    println!("  ID rule:     {}", header.id_rule);
}

/// Prints the header, the merchant count and size, and the checksum verdict; exit status 1 for a file
/// that a start would reject.
pub fn inspect(path: &Path) -> ExitCode {
    println!("snapshot {}", path.display());
    match verify(path) {
        Ok(verified) => {
            print_header(&verified.header);
            println!("  merchants:   {}", verified.merchants);
            println!("  bytes:       {}", verified.bytes);
            println!("  checksum:    ok (every record read)");
            ExitCode::SUCCESS
        }
        Err(failed) => {
            let (header, error) = *failed;
            if let Some(header) = &header {
                print_header(header);
            }
            let reason = match &error {
                LoadError::Missing => "missing",
                LoadError::Rejected(rejected) => rejected.reason.label(),
            };
            eprintln!("merchant-edge snapshot inspect: {}: {reason}: {error}", path.display());
            ExitCode::from(1)
        }
    }
}
