//! ZooKeeper's path rules: absolute, `/`-separated, no empty, `.` or `..` segments, no trailing
//! slash (but the root), no control characters, at most [`crate::MAX_PATH`] bytes.

use crate::{MetaError, MAX_PATH};

fn bad(path: &str, why: &str) -> MetaError {
    MetaError::BadPath { path: path.chars().take(200).collect(), why: why.into() }
}

/// Checks a path (for a sequential create, check the path with its suffix appended).
pub fn validate(path: &str) -> Result<(), MetaError> {
    if path.len() > MAX_PATH {
        return Err(bad(path, "longer than the limit"));
    }
    if !path.starts_with('/') {
        return Err(bad(path, "not absolute (it must start with /)"));
    }
    if path == "/" {
        return Ok(());
    }
    if path.ends_with('/') {
        return Err(bad(path, "ends with /"));
    }
    for seg in path[1..].split('/') {
        match seg {
            "" => return Err(bad(path, "empty segment (//)")),
            "." | ".." => return Err(bad(path, "relative segment (. or ..)")),
            _ => {}
        }
        if seg.chars().any(|c| c.is_control() || ('\u{fff0}'..='\u{ffff}').contains(&c)) {
            return Err(bad(path, "control character"));
        }
    }
    Ok(())
}

/// The parent of a valid path other than the root.
pub fn parent(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

/// The last segment of a valid path other than the root.
pub fn name(path: &str) -> &str {
    path.rfind('/').map_or(path, |i| &path[i + 1..])
}

/// Whether `path` is `root` or below it.
pub fn is_under(path: &str, root: &str) -> bool {
    path == root || (path.starts_with(root) && path.as_bytes().get(root.len()) == Some(&b'/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zookeeper_path_rules() {
        for ok in ["/", "/a", "/a/b", "/a-b_c.d", "/é"] {
            assert!(validate(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a", "/a/", "//a", "/a//b", "/a/./b", "/a/..", "/a\u{0}b", "/a\nb"] {
            assert!(validate(bad).is_err(), "{bad:?}");
        }
        assert!(validate(&format!("/{}", "x".repeat(MAX_PATH))).is_err());
        assert_eq!(parent("/a/b"), "/a");
        assert_eq!(parent("/a"), "/");
        assert_eq!(name("/a/b"), "b");
        assert!(is_under("/starling/x", "/starling"));
        assert!(is_under("/starling", "/starling"));
        assert!(!is_under("/starlingx", "/starling"));
    }
}
