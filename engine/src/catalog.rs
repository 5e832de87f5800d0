//! The catalog (discovery source / model DB) wire format and its client.
//!
//! `GET /v1/catalog`   → [`CatalogList`]  `{"models":[{id, inference_url?, active, price}]}`
//! `GET /v1/external`  → [`ExternalList`] `{"providers":[{model, base_url, name}]}`
//! `PATCH /v1/catalog` ← [`CatalogPatch`] `{"models":[{id, inference_url?, active?, price?}]}`
//!                     → [`CatalogList`] (the whole catalog after the upsert)

use http::Method;
use serde::{Deserialize, Deserializer, Serialize};

use crate::http::HttpClient;
use crate::openai::{provider_error, OpenAiClient, Timeouts};
use crate::provider::ProviderError;

pub const CATALOG_PATH: &str = "/v1/catalog";
pub const EXTERNAL_PATH: &str = "/v1/external";

/// One model row.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogRow {
    /// The canonical model id.
    pub id: String,
    /// The NEAR backend serving it (`http://near-1`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inference_url: Option<String>,
    /// Inactive rows are not served (404, R6/R13).
    pub active: bool,
    /// Price per million tokens in micro-dollars: an integer, so exact.
    pub price: u64,
    /// SPEC-parity R40: the model's context window in tokens; the window
    /// its NEAR provider declares (with a valid long-context block, the
    /// long tier's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_length: Option<u32>,
    /// Provider settings; R40 reads its `long_context` block
    /// (`inference_url`, `max_context_tokens`, `base_max_context_tokens`).
    /// Kept as JSON so an invalid block is ignored with a warning instead of
    /// failing the whole listing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_config: Option<serde_json::Value>,
    /// What serves the row (the model database's `provider_type`).
    #[serde(default, skip_serializing_if = "ProviderType::is_vllm")]
    pub provider_type: ProviderType,
}

/// A catalog row's provider type: only a `vllm` row's `inference_url` is a
/// NEAR backend to discover; an `external` row is served by external
/// provider rows, and a URL it carries is never attested as NEAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderType {
    /// A NEAR backend (vLLM behind an attested host): the default.
    #[default]
    Vllm,
    /// An external provider.
    External,
}

impl ProviderType {
    pub fn is_vllm(&self) -> bool {
        *self == ProviderType::Vllm
    }
}

/// One external plaintext provider row for a model.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalRow {
    pub model: String,
    pub base_url: String,
    /// Provider name; the provider id is `external:<name>`. Its API key is
    /// the router's `EXTERNAL_API_KEYS` entry of that name.
    pub name: String,
    /// The provider's API kind; the router speaks
    /// [`ExternalRow::OPENAI_COMPATIBLE`] only and refuses a row of any
    /// other kind at load (the other rows still load).
    #[serde(default = "openai_compatible")]
    pub kind: String,
}

impl ExternalRow {
    /// The one kind of external provider the router speaks.
    pub const OPENAI_COMPATIBLE: &'static str = "openai_compatible";
}

fn openai_compatible() -> String {
    ExternalRow::OPENAI_COMPATIBLE.to_string()
}

/// A partial update of one row: absent fields are kept; `inference_url:
/// null` clears the URL. A new row starts inactive, at price 0, without URL.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogPatchRow {
    pub id: String,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub inference_url: Option<Option<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<u64>,
    /// R40: a new context length (never cleared by a patch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_length: Option<u32>,
    /// R40: replaces the row's `provider_config` (e.g. a long-context block).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_config: Option<serde_json::Value>,
}

/// Distinguishes a present `null` (`Some(None)`) from an absent field (`None`).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

impl CatalogPatchRow {
    /// The row after this patch, starting from `current` if it exists.
    pub fn apply(&self, current: Option<&CatalogRow>) -> CatalogRow {
        let mut row = current.cloned().unwrap_or(CatalogRow {
            id: self.id.clone(),
            inference_url: None,
            active: false,
            price: 0,
            context_length: None,
            provider_config: None,
            provider_type: ProviderType::default(),
        });
        if let Some(url) = &self.inference_url {
            row.inference_url = url.clone();
        }
        if let Some(active) = self.active {
            row.active = active;
        }
        if let Some(price) = self.price {
            row.price = price;
        }
        if let Some(n) = self.context_length {
            row.context_length = Some(n);
        }
        if let Some(c) = &self.provider_config {
            row.provider_config = Some(c.clone());
        }
        row
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogList {
    pub models: Vec<CatalogRow>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalList {
    pub providers: Vec<ExternalRow>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogPatch {
    pub models: Vec<CatalogPatchRow>,
}

/// Client of the catalog service at `base_url` (e.g. `http://catalog`).
#[derive(Debug, Clone)]
pub struct CatalogClient {
    client: OpenAiClient,
}

impl CatalogClient {
    pub fn new(
        http: HttpClient,
        base_url: &str,
        timeouts: Timeouts,
    ) -> Result<Self, ProviderError> {
        let client = OpenAiClient::new(http, base_url)
            .map_err(provider_error)?
            .with_timeouts(timeouts);
        Ok(CatalogClient { client })
    }

    pub async fn models(&self) -> Result<Vec<CatalogRow>, ProviderError> {
        Ok(self
            .client
            .get_json::<CatalogList>(CATALOG_PATH)
            .await?
            .models)
    }

    pub async fn external(&self) -> Result<Vec<ExternalRow>, ProviderError> {
        Ok(self
            .client
            .get_json::<ExternalList>(EXTERNAL_PATH)
            .await?
            .providers)
    }

    /// Upserts `rows`; returns the whole catalog after the write.
    pub async fn patch(
        &self,
        rows: Vec<CatalogPatchRow>,
    ) -> Result<Vec<CatalogRow>, ProviderError> {
        let body = CatalogPatch { models: rows };
        let list: CatalogList = self
            .client
            .send_json(Method::PATCH, CATALOG_PATH, &body)
            .await?;
        Ok(list.models)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_distinguishes_null_from_absent() {
        let p: CatalogPatchRow =
            serde_json::from_str(r#"{"id":"m","inference_url":null}"#).unwrap();
        assert_eq!(p.inference_url, Some(None));
        let p: CatalogPatchRow = serde_json::from_str(r#"{"id":"m","active":true}"#).unwrap();
        assert_eq!(p.inference_url, None);
        let current = CatalogRow {
            id: "m".into(),
            inference_url: Some("http://near-1".into()),
            active: false,
            price: 5,
            context_length: None,
            provider_config: None,
            provider_type: ProviderType::Vllm,
        };
        let row = p.apply(Some(&current));
        assert_eq!(row.inference_url.as_deref(), Some("http://near-1"));
        assert!(row.active);
        assert_eq!(row.price, 5);
        let fresh = CatalogPatchRow {
            id: "n".into(),
            ..Default::default()
        }
        .apply(None);
        assert_eq!(
            (fresh.active, fresh.price, fresh.inference_url),
            (false, 0, None)
        );
    }
}
