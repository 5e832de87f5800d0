//! The gateway's routes: the front door (fault board, API key), model
//! listing, instance discovery with its nonce table, evidence, and the
//! invocation hand-off to the instance.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{HeaderMap, StatusCode};
use rand_chacha::ChaCha20Rng;
use rand_core::Rng;
use serde_json::json;
use tiersim_engine::chutes::wire::{
    is_evidence_nonce, InstanceInfo, InstanceList, ModelEntry, ModelList, CHAT_PATH,
    HEADER_CHUTE_ID, HEADER_INSTANCE_ID, HEADER_NONCE, HEADER_PATH, HEADER_STREAM,
};
use tiersim_engine::openai::MAX_SSE_LINE;
use tokio::time::Instant;

use super::{instance, tamper, Chute, ChutesHandle, Invocation, World};
use crate::fault::{Fault, FaultBoard, RequestKind};
use crate::hosts::{before_answer, body_answer, error_response, json_answer, scripted, Step};

/// Most nonces a gateway boot remembers at once. Expiry keeps the table
/// far below this in any realistic run; the cap bounds it whatever the
/// request rate (the oldest are forgotten first, and a forgotten nonce is
/// refused like an unknown one: the client rediscovers, R39/R60).
pub(super) const MAX_LIVE_NONCES: usize = 1 << 16;

/// Per-boot state: lost on a crash, like a real gateway's.
pub(super) struct Boot {
    pub(super) rng: ChaCha20Rng,
    pub(super) nonces: NonceTable,
    /// Invocations answered: ids and timestamps derive from it.
    pub(super) served: u64,
}

pub(super) struct NonceRecord {
    pub(super) chute_id: String,
    pub(super) instance_id: String,
    pub(super) used: bool,
}

/// The nonces a boot issued and has not forgotten: each is remembered until
/// it expires (`nonce_expires_in`, as Chutes does), used or not, so a reuse
/// within its life is told apart; then it is dropped. Bounded by
/// [`MAX_LIVE_NONCES`].
#[derive(Default)]
pub(super) struct NonceTable {
    /// BTreeMap: deterministic, never listed.
    by_nonce: BTreeMap<String, NonceRecord>,
    /// In issue order, which is expiry order (one TTL per gateway).
    order: VecDeque<(Instant, String)>,
}

impl NonceTable {
    /// Forgets every nonce expired at `now`, then the oldest beyond the cap.
    pub(super) fn prune(&mut self, now: Instant) {
        while let Some((expires, nonce)) = self.order.front() {
            if *expires > now && self.by_nonce.len() <= MAX_LIVE_NONCES {
                break;
            }
            self.by_nonce.remove(nonce);
            self.order.pop_front();
        }
    }

    pub(super) fn issue(&mut self, nonce: String, record: NonceRecord, expires: Instant) {
        self.by_nonce.insert(nonce.clone(), record);
        self.order.push_back((expires, nonce));
    }

    pub(super) fn get_mut(&mut self, nonce: &str) -> Option<&mut NonceRecord> {
        self.by_nonce.get_mut(nonce)
    }

    pub(super) fn len(&self) -> usize {
        self.by_nonce.len()
    }
}

pub(super) struct Gateway {
    pub(super) host: String,
    pub(super) world: Arc<World>,
    pub(super) faults: FaultBoard,
    pub(super) log: ChutesHandle,
    pub(super) nonces_per_instance: usize,
    pub(super) nonce_ttl: Duration,
    pub(super) api_key: Option<String>,
    pub(super) boot: Mutex<Boot>,
}

impl Gateway {
    pub(super) fn boot(&self) -> MutexGuard<'_, Boot> {
        self.boot.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes the nonce table's size to the handle (for the soak test).
    pub(super) fn record_nonces(&self, live: usize) {
        let mut log = self.log.log();
        log.nonces_live = live;
        log.nonces_peak = log.nonces_peak.max(live);
    }

    /// `Authorization: Bearer <key>` present (and right, if a key is set).
    fn authorised(&self, headers: &HeaderMap) -> bool {
        let Some(token) = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            return false;
        };
        match &self.api_key {
            Some(key) => token == key,
            None => !token.trim().is_empty(),
        }
    }

    /// The gateway's front door, shared by every route: the fault board is
    /// consulted once (delays and injected statuses act here), then the API
    /// key is checked. `Ok`: the fault left to act on the answer, if any.
    async fn admit(
        &self,
        kind: RequestKind,
        headers: &HeaderMap,
        model: &str,
        streaming: bool,
    ) -> Result<Option<Fault>, Response> {
        let fault = self.faults.take(&self.host, kind);
        if let Some(resp) = before_answer(fault.as_ref(), &self.host, model, streaming).await {
            self.log.served(kind, resp.status().as_u16(), Bytes::new());
            return Err(resp);
        }
        if !self.authorised(headers) {
            return Err(self.error(
                kind,
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or bad API key",
            ));
        }
        Ok(fault)
    }

    /// [`Gateway::admit`] for a route under one chute, then the chute
    /// itself: an unknown id is a 404 `chute_not_found`.
    async fn admit_chute(
        &self,
        kind: RequestKind,
        headers: &HeaderMap,
        chute_id: &str,
    ) -> Result<(Option<Fault>, &Chute), Response> {
        let fault = self.admit(kind, headers, "", false).await?;
        match self.world.chutes.get(chute_id) {
            Some(chute) => Ok((fault, chute)),
            None => Err(self.error(
                kind,
                StatusCode::NOT_FOUND,
                "chute_not_found",
                "no such chute",
            )),
        }
    }

    /// An error answer, logged.
    pub(super) fn error(
        &self,
        kind: RequestKind,
        status: StatusCode,
        code: &str,
        message: &str,
    ) -> Response {
        let resp = error_response(status, Some(code), &format!("{}: {message}", self.host));
        self.log.served(kind, status.as_u16(), Bytes::new());
        resp
    }
}

pub(super) async fn models(State(gw): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    let kind = RequestKind::Models;
    let fault = match gw.admit(kind, &headers, "", false).await {
        Ok(fault) => fault,
        Err(resp) => return resp,
    };
    let list = ModelList {
        data: gw
            .world
            .chutes
            .iter()
            .map(|(id, c)| ModelEntry {
                id: c.slug.clone(),
                chute_id: Some(id.clone()),
            })
            .collect(),
    };
    let mut body = serde_json::to_value(&list).expect("model list serialises");
    body["object"] = json!("list");
    let body = Bytes::from(body.to_string());
    gw.log.served(kind, 200, body.clone());
    json_answer(fault.as_ref(), body)
}

pub(super) async fn instances(
    State(gw): State<Arc<Gateway>>,
    Path(chute_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let kind = RequestKind::Instances;
    let (fault, chute) = match gw.admit_chute(kind, &headers, &chute_id).await {
        Ok(admitted) => admitted,
        Err(resp) => return resp,
    };
    let substitute = matches!(fault, Some(Fault::WrongKey));
    let list = {
        let mut boot = gw.boot();
        let now = Instant::now();
        boot.nonces.prune(now);
        let expires = now + gw.nonce_ttl;
        let mut infos = Vec::with_capacity(chute.instances.len());
        for inst in &chute.instances {
            let nonces: Vec<String> = (0..gw.nonces_per_instance)
                .map(|_| {
                    let mut raw = [0u8; 16];
                    boot.rng.fill_bytes(&mut raw);
                    let nonce: String = raw.iter().map(|b| format!("{b:02x}")).collect();
                    let record = NonceRecord {
                        chute_id: chute_id.clone(),
                        instance_id: inst.id.clone(),
                        used: false,
                    };
                    boot.nonces.issue(nonce.clone(), record, expires);
                    nonce
                })
                .collect();
            infos.push(InstanceInfo {
                instance_id: inst.id.clone(),
                // wrong_key: the gateway lists its own key; the evidence
                // still binds the real one.
                e2e_pubkey: if substitute {
                    gw.world.mitm.public_key_b64().to_owned()
                } else {
                    inst.key.public_key_b64().to_owned()
                },
                nonces,
            });
        }
        boot.nonces.prune(now);
        gw.record_nonces(boot.nonces.len());
        InstanceList {
            instances: infos,
            nonce_expires_in: gw.nonce_ttl.as_secs_f64(),
        }
    };
    gw.log.log().nonces_issued += (chute.instances.len() * gw.nonces_per_instance) as u64;
    let body = Bytes::from(serde_json::to_vec(&list).expect("listing serialises"));
    gw.log.served(kind, 200, body.clone());
    json_answer(fault.as_ref(), body)
}

/// `GET /chutes/{chute_id}/evidence?nonce=<64 hex>` (§7b): each instance's
/// quote over this fetch's nonce, its key and its certificate, spoilt as
/// an `evidence` fault says.
pub(super) async fn evidence(
    State(gw): State<Arc<Gateway>>,
    Path(chute_id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let kind = RequestKind::Evidence;
    let (fault, chute) = match gw.admit_chute(kind, &headers, &chute_id).await {
        Ok(admitted) => admitted,
        Err(resp) => return resp,
    };
    let nonce = query
        .as_deref()
        .unwrap_or_default()
        .split('&')
        .find_map(|kv| kv.strip_prefix("nonce="))
        .filter(|n| is_evidence_nonce(n));
    let Some(nonce) = nonce else {
        return gw.error(
            kind,
            StatusCode::BAD_REQUEST,
            "invalid_nonce",
            "nonce must be 64 hex digits",
        );
    };
    let honest = instance::evidence(&gw.world, chute, nonce);
    let flaw = match &fault {
        Some(Fault::Evidence { flaw, instance }) => Some((*flaw, *instance)),
        _ => None,
    };
    let body = tamper::evidence(&gw.world, chute, nonce, honest, flaw);
    let body = Bytes::from(body.to_string());
    gw.log.log().evidence_fetches += 1;
    gw.log.served(kind, 200, body.clone());
    json_answer(fault.as_ref(), body)
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

pub(super) async fn invoke(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    blob: Bytes,
) -> Response {
    let stream = header(&headers, HEADER_STREAM).eq_ignore_ascii_case("true");
    let kind = if stream {
        RequestKind::ChatStream
    } else {
        RequestKind::Chat
    };
    let chute_id = header(&headers, HEADER_CHUTE_ID).to_string();
    let instance_id = header(&headers, HEADER_INSTANCE_ID).to_string();
    let nonce = header(&headers, HEADER_NONCE).to_string();
    let chute = gw.world.chutes.get(&chute_id);
    let slug = chute.map(|c| c.slug.as_str()).unwrap_or_default();

    let fault = match gw.admit(kind, &headers, slug, stream).await {
        Ok(fault) => fault,
        Err(resp) => return resp,
    };
    let Some(chute) = chute else {
        return gw.error(
            kind,
            StatusCode::NOT_FOUND,
            "chute_not_found",
            "no such chute",
        );
    };
    let Some(instance) = chute.instances.iter().find(|i| i.id == instance_id) else {
        return gw.error(
            kind,
            StatusCode::NOT_FOUND,
            "instance_not_found",
            "no such instance",
        );
    };
    if header(&headers, HEADER_PATH) != CHAT_PATH {
        return gw.error(
            kind,
            StatusCode::BAD_REQUEST,
            "unsupported_path",
            "X-E2E-Path must be /v1/chat/completions",
        );
    }

    let mut record = Invocation {
        chute_id: chute_id.clone(),
        instance_id: instance_id.clone(),
        nonce: nonce.clone(),
        stream,
        model: None,
        stream_version: None,
        status: 200,
    };
    let answer = gw.answer(fault.as_ref(), chute, instance, &mut record, &blob);
    let resp = match answer {
        Ok((content_type, steps)) => {
            let body: Vec<u8> = steps
                .iter()
                .filter_map(|s| match s {
                    Step::Data(b) if b.len() > MAX_SSE_LINE => Some(&b"<oversized line>\n"[..]),
                    Step::Data(b) => Some(&b[..]),
                    _ => None,
                })
                .flatten()
                .copied()
                .collect();
            gw.log.served(kind, 200, body.into());
            match steps.as_slice() {
                // A plain body keeps the generic body faults (reset, cut).
                [Step::Data(b)] if !stream => body_answer(fault.as_ref(), content_type, b.clone()),
                _ => scripted(StatusCode::OK, content_type, steps),
            }
        }
        Err((status, code, message)) => {
            record.status = status.as_u16();
            gw.error(kind, status, code, &message)
        }
    };
    gw.log.invoked(record);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> NonceRecord {
        NonceRecord {
            chute_id: "c".into(),
            instance_id: "i".into(),
            used: false,
        }
    }

    #[test]
    fn issue9_nonce_table_forgets_expired_nonces_and_is_capped() {
        let now = Instant::now();
        let mut table = NonceTable::default();
        table.issue("a".into(), record(), now + Duration::from_secs(1));
        table.issue("b".into(), record(), now + Duration::from_secs(2));
        table.prune(now);
        assert_eq!(table.len(), 2);
        table.prune(now + Duration::from_secs(1));
        assert!(table.get_mut("a").is_none(), "expired: forgotten");
        assert!(table.get_mut("b").is_some());

        // Far more than the cap, none expired: the oldest go first.
        let later = now + Duration::from_secs(3600);
        for i in 0..MAX_LIVE_NONCES + 10 {
            table.issue(format!("n{i}"), record(), later);
        }
        table.prune(now);
        assert_eq!(table.len(), MAX_LIVE_NONCES);
        assert!(table.get_mut("b").is_none() && table.get_mut("n9").is_none());
        assert!(table
            .get_mut(&format!("n{}", MAX_LIVE_NONCES + 9))
            .is_some());
    }
}
