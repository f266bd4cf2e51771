//! Parsing token ids given on the command line (`--ids 1,2,3`).

use crate::error::CliError;

/// Parses `--ids 1,2,3`.
pub fn parse_ids(text: &str) -> Result<Vec<u32>, CliError> {
    let ids: Result<Vec<u32>, CliError> = text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<u32>().map_err(|_| {
                CliError::Usage(format!(
                    "--ids: `{s}` is not a token id (expected e.g. 1,2,3)"
                ))
            })
        })
        .collect();
    let ids = ids?;
    if ids.is_empty() {
        return Err(CliError::Usage("--ids: no token ids given".into()));
    }
    Ok(ids)
}
