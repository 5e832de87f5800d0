//! R13: who may use the admin API and which batches it accepts.
//!
//! Both checks run before anything is written: a request that fails either
//! changes neither the catalog nor the registry.

use http::header::AUTHORIZATION;
use http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::catalog::CatalogPatchRow;

/// Most rows one admin batch may carry. A batch is applied in one registry
/// swap and may make the router dial one NEAR backend per new URL, so its
/// size is bounded; larger edits are split into several batches.
pub const MAX_ADMIN_BATCH_ROWS: usize = 1024;

/// Longest model id an admin batch may create or edit, in bytes.
pub const MAX_MODEL_ID_BYTES: usize = 256;

/// Why an admin request was not authorised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Fail closed: without a configured key nobody is the admin.
    #[error("the admin API is disabled: no admin key is configured")]
    NotConfigured,
    #[error("missing admin key: send `Authorization: Bearer <admin key>`")]
    Missing,
    #[error("invalid admin key")]
    Wrong,
}

/// Checks `Authorization: Bearer <key>` against the configured admin key.
/// The comparison is over SHA-256 digests in constant time, so neither the
/// key's bytes nor its length leak through timing.
pub fn authorize(headers: &HeaderMap, admin_key: Option<&str>) -> Result<(), AuthError> {
    let Some(expected) = admin_key else {
        return Err(AuthError::NotConfigured);
    };
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err(AuthError::Missing);
    };
    let given = value.as_bytes();
    let token = match given.get(..7) {
        Some(scheme) if scheme.eq_ignore_ascii_case(b"bearer ") => &given[7..],
        _ => return Err(AuthError::Missing),
    };
    let given = Sha256::digest(token);
    let expected = Sha256::digest(expected.as_bytes());
    if bool::from(given.as_slice().ct_eq(expected.as_slice())) {
        Ok(())
    } else {
        Err(AuthError::Wrong)
    }
}

/// Why a batch was refused as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("batch has {rows} rows; at most {MAX_ADMIN_BATCH_ROWS} are accepted per batch")]
    TooManyRows { rows: usize },
    #[error("row {row}: {why}")]
    Row { row: usize, why: String },
}

/// Validates a whole batch before anything of it is applied: at most
/// [`MAX_ADMIN_BATCH_ROWS`] rows; each id non-empty, at most
/// [`MAX_MODEL_ID_BYTES`] bytes, without control characters; each
/// `inference_url` (when set) an `http`/`https` URL with a host. The first
/// bad row is named by its 0-based index.
pub fn validate_batch(rows: &[CatalogPatchRow]) -> Result<(), BatchError> {
    if rows.len() > MAX_ADMIN_BATCH_ROWS {
        return Err(BatchError::TooManyRows { rows: rows.len() });
    }
    for (row, r) in rows.iter().enumerate() {
        let bad = |why: String| BatchError::Row { row, why };
        check_id(&r.id).map_err(|why| bad(why.to_string()))?;
        if let Some(Some(url)) = &r.inference_url {
            check_url(url).map_err(|why| bad(format!("inference_url {why}")))?;
        }
    }
    Ok(())
}

fn check_id(id: &str) -> Result<(), &'static str> {
    if id.is_empty() {
        return Err("id is empty");
    }
    if id.len() > MAX_MODEL_ID_BYTES {
        return Err("id is longer than 256 bytes");
    }
    if id.chars().any(char::is_control) {
        return Err("id contains a control character");
    }
    Ok(())
}

/// An absolute `http`/`https` URL with a non-empty host and no user info.
fn check_url(url: &str) -> Result<(), &'static str> {
    // The scheme first: `file:///…` is not even a parseable HTTP URI, and
    // the reason to give is its scheme.
    let Some((scheme, _)) = url.split_once("://") else {
        return Err("must be an absolute http or https URL");
    };
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return Err("must use the http or https scheme");
    }
    let uri: http::Uri = url
        .parse()
        .map_err(|_| "is not a valid URL (expected http://host[:port][/path])")?;
    let authority = uri.authority().ok_or("has no host")?;
    if authority.as_str().contains('@') {
        return Err("must not carry user info");
    }
    if authority.host().is_empty() {
        return Err("has no host");
    }
    if uri.query().is_some() {
        return Err("must not carry a query");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn bearer(v: &[u8]) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_bytes(v).unwrap());
        h
    }

    #[test]
    fn r13_authorize_needs_the_configured_bearer_key() {
        let key = Some("s3cret");
        assert_eq!(authorize(&bearer(b"Bearer s3cret"), key), Ok(()));
        assert_eq!(authorize(&bearer(b"bearer s3cret"), key), Ok(()));
        assert_eq!(authorize(&HeaderMap::new(), key), Err(AuthError::Missing));
        assert_eq!(
            authorize(&bearer(b"Basic s3cret"), key),
            Err(AuthError::Missing)
        );
        assert_eq!(
            authorize(&bearer(b"Bearer s3cre"), key),
            Err(AuthError::Wrong)
        );
        assert_eq!(
            authorize(&bearer(b"Bearer s3cret "), key),
            Err(AuthError::Wrong)
        );
        assert_eq!(
            authorize(&bearer(b"Bearer \xffs3cret"), key),
            Err(AuthError::Wrong)
        );
        let mut two = bearer(b"Bearer s3cret");
        two.append(AUTHORIZATION, HeaderValue::from_static("Bearer other"));
        assert_eq!(authorize(&two, key), Err(AuthError::Missing));
    }

    #[test]
    fn r13_without_a_configured_key_the_admin_api_is_closed() {
        assert_eq!(
            authorize(&bearer(b"Bearer anything"), None),
            Err(AuthError::NotConfigured)
        );
    }

    fn row(id: &str, url: Option<&str>) -> CatalogPatchRow {
        CatalogPatchRow {
            id: id.into(),
            inference_url: url.map(|u| Some(u.to_string())),
            ..Default::default()
        }
    }

    #[test]
    fn r13_batch_rows_are_checked_and_the_first_bad_one_named() {
        assert_eq!(validate_batch(&[row("m", Some("http://near-1"))]), Ok(()));
        assert_eq!(
            validate_batch(&[row("m", Some("https://n.example:8443/v1"))]),
            Ok(())
        );
        let cleared = CatalogPatchRow {
            id: "m".into(),
            inference_url: Some(None),
            ..Default::default()
        };
        assert_eq!(validate_batch(&[cleared]), Ok(()), "null clears the URL");
        for (bad, why) in [
            (row("", None), "id is empty"),
            (row(&"x".repeat(257), None), "id is longer than 256 bytes"),
            (row("a\nb", None), "id contains a control character"),
            (
                row("m", Some("file:///etc/passwd")),
                "inference_url must use the http or https scheme",
            ),
            (
                row("m", Some("ftp://h")),
                "inference_url must use the http or https scheme",
            ),
            (
                row("m", Some("/relative")),
                "inference_url must be an absolute http or https URL",
            ),
            (
                row("m", Some("http://u:p@h")),
                "inference_url must not carry user info",
            ),
            (
                row("m", Some("not a url")),
                "inference_url must be an absolute http or https URL",
            ),
            (
                row("m", Some("")),
                "inference_url must be an absolute http or https URL",
            ),
            (
                row("m", Some("http://")),
                "inference_url is not a valid URL (expected http://host[:port][/path])",
            ),
            (
                row("m", Some("http://h/a b")),
                "inference_url is not a valid URL (expected http://host[:port][/path])",
            ),
            (
                row("m", Some("http://h/?q=1")),
                "inference_url must not carry a query",
            ),
        ] {
            let batch = [row("ok", None), bad];
            assert_eq!(
                validate_batch(&batch),
                Err(BatchError::Row {
                    row: 1,
                    why: why.into()
                }),
            );
        }
        assert_eq!(validate_batch(&[row(&"x".repeat(256), None)]), Ok(()));
    }

    #[test]
    fn r13_batch_over_the_row_cap_is_refused() {
        let rows: Vec<_> = (0..=MAX_ADMIN_BATCH_ROWS)
            .map(|i| row(&format!("m{i}"), None))
            .collect();
        assert_eq!(
            validate_batch(&rows),
            Err(BatchError::TooManyRows {
                rows: MAX_ADMIN_BATCH_ROWS + 1
            })
        );
        assert_eq!(validate_batch(&rows[..MAX_ADMIN_BATCH_ROWS]), Ok(()));
    }
}
