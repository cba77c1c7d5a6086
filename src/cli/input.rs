//! Keys and values from the command line, stdin or a file, as text or hex (`--hex`).
//!
//! A value is bytes up to [`VALUE_BYTES_MAX`]. It comes from the argument, from stdin when the
//! argument (or `--value-file`) is `-`, or from a file; with `--hex` the text is hex-decoded,
//! so binary keys and values round-trip with `--hex` output. Sizes are checked here, before
//! anything is sent, so an oversized value fails fast with exit 5.

use std::io::Read;
use std::path::Path;

use crate::error::Error;
use crate::limits::VALUE_BYTES_MAX;

/// Decodes a key (or prefix) given on the command line: hex with `--hex`, UTF-8 bytes otherwise.
pub fn key(text: &str, hex: bool) -> Result<Vec<u8>, Error> {
    decode(text.as_bytes(), hex, "key")
}

/// The value of a put: the argument (`-` = stdin) or `--value-file PATH` (`-` = stdin).
pub fn value(arg: Option<&str>, file: Option<&Path>, hex: bool) -> Result<Vec<u8>, Error> {
    let raw = match (arg, file) {
        (Some("-"), None) => read_stdin()?,
        (Some(text), None) => text.as_bytes().to_vec(),
        (None, Some(path)) if path == Path::new("-") => read_stdin()?,
        (None, Some(path)) => read_file(path)?,
        (None, None) | (Some(_), Some(_)) => {
            return Err(Error::InvalidInput(
                "give the value either as an argument or with --value-file, not both".into(),
            ))
        }
    };
    let bytes = decode(&raw, hex, "value")?;
    check_size(&bytes)?;
    Ok(bytes)
}

/// A value typed inline (a cas expectation): taken as is, hex-decoded with `--hex`, size-checked.
/// Unlike [`value`], `-` here is the one-byte value "-", so only one argument reads stdin.
pub fn inline(text: &str, hex: bool) -> Result<Vec<u8>, Error> {
    let bytes = decode(text.as_bytes(), hex, "value")?;
    check_size(&bytes)?;
    Ok(bytes)
}

/// Refuses a value over the limit before it is sent.
pub fn check_size(value: &[u8]) -> Result<(), Error> {
    if value.len() > VALUE_BYTES_MAX {
        return Err(Error::InvalidInput(format!(
            "the value is {} bytes, over the limit of {VALUE_BYTES_MAX} bytes (1 MiB); store a smaller value",
            value.len()
        )));
    }
    Ok(())
}

fn decode(raw: &[u8], hex: bool, what: &str) -> Result<Vec<u8>, Error> {
    if !hex {
        return Ok(raw.to_vec());
    }
    let text = std::str::from_utf8(raw).unwrap_or("").trim();
    hex::decode(text).map_err(|e| {
        Error::InvalidInput(format!(
            "--hex is set but the {what} is not hex ({e}); write pairs of hex digits or drop --hex"
        ))
    })
}

fn read_stdin() -> Result<Vec<u8>, Error> {
    let mut buf = Vec::new();
    // Read a little past the largest acceptable input (hex text is twice the bytes, plus a
    // newline) so an oversized value is reported without reading all of it.
    std::io::stdin()
        .take(VALUE_BYTES_MAX as u64 * 2 + 2)
        .read_to_end(&mut buf)
        .map_err(|e| Error::InvalidInput(format!("cannot read the value from stdin: {e}")))?;
    Ok(buf)
}

fn read_file(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| Error::InvalidInput(format!("cannot read the value from {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_input_decodes_and_refuses_garbage() {
        assert_eq!(key("ff00", true).unwrap(), vec![0xff, 0]);
        assert_eq!(key("ff00", false).unwrap(), b"ff00".to_vec());
        assert!(key("xyz", true).is_err());
        assert_eq!(value(Some("6869"), None, true).unwrap(), b"hi".to_vec());
        assert_eq!(inline("-", false).unwrap(), b"-".to_vec());
        assert_eq!(inline("00ff\n", true).unwrap(), vec![0, 0xff]);
        assert_eq!(
            inline(&"a".repeat(VALUE_BYTES_MAX + 1), false).unwrap_err().exit_code(),
            5
        );
    }

    #[test]
    fn values_come_from_files_and_are_size_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v");
        std::fs::write(&path, [0u8, 1, 2, 255]).unwrap();
        assert_eq!(value(None, Some(&path), false).unwrap(), vec![0, 1, 2, 255]);
        std::fs::write(&path, vec![b'a'; VALUE_BYTES_MAX + 1]).unwrap();
        let err = value(None, Some(&path), false).unwrap_err();
        assert_eq!(err.exit_code(), 5, "{err}");
        assert!(value(None, Some(&dir.path().join("missing")), false).is_err());
    }
}
