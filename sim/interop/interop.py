"""Interop checks: clients nobody here wrote, against `tiersim serve`.

1. Chutes' published E2EE client (`chutes-e2ee`), used exactly as its README
   shows (an `httpx` transport under the official `openai` client), calls the
   simulated Chutes gateway: one non-streaming and one streaming completion,
   encrypted and decrypted by the real client.
2. The official `openai` client calls the router: a JSON and a streamed
   completion of a NEAR-primary model whose NEAR backend fails (the scenario's
   fault), so Chutes serves them as fallback under the canonical id; then a
   third call that NEAR serves (with `x-serving-provider: near`, SPEC-parity
   R53). An unknown model is the client's `BadRequestError` with `param`
   "model" (R26, R28), and an unknown path says `x-should-retry: false`
   (R32).

Environment: ROUTER_URL and CHUTES_URL (base URLs printed by `tiersim serve`).
Prints one line per check and a closing "N passed, M failed" line; exits
non-zero on any failure.
"""

from __future__ import annotations

import os
import sys
import traceback

import httpx
from chutes_e2ee import ChutesE2EETransport
from openai import BadRequestError, OpenAI

CANONICAL = "zai-org/GLM-5.1-FP8"
SLUG = "zai-org/GLM-5.1-TEE"
API_KEY = "cpk_tiersim_interop"
TIMEOUT = 30.0

ROUTER_URL = os.environ["ROUTER_URL"].rstrip("/")
CHUTES_URL = os.environ["CHUTES_URL"].rstrip("/")


class Failed(Exception):
    pass


def expect(what: str, got, want) -> None:
    if got != want:
        raise Failed(f"{what}: got {got!r}, want {want!r}")


def ask(prompt: str) -> list[dict]:
    return [{"role": "user", "content": prompt}]


def collect(stream) -> tuple[str, list, int]:
    """Content, the `model` of every content chunk, and the chunks without
    choices (Chutes' plaintext usage events, passed through by the client)."""
    text, models, bare = "", [], 0
    for chunk in stream:
        choices = getattr(chunk, "choices", None)
        if not choices:
            bare += 1
            continue
        models.append(chunk.model)
        text += choices[0].delta.content or ""
    return text, models, bare


# --------------------------------------------------------------- Chutes E2EE


def chutes_client() -> OpenAI:
    # As chutes-e2ee's README shows, with the simulated gateway as api_base.
    return OpenAI(
        api_key=API_KEY,
        base_url=f"{CHUTES_URL}/v1",
        max_retries=0,
        timeout=TIMEOUT,
        http_client=httpx.Client(
            transport=ChutesE2EETransport(api_key=API_KEY, api_base=CHUTES_URL),
        ),
    )


def chutes_json() -> str:
    resp = chutes_client().chat.completions.create(
        model=SLUG, messages=ask("interop e2ee json")
    )
    expect("content", resp.choices[0].message.content, "chutes says: interop e2ee json")
    expect("model", resp.model, SLUG)
    expect("finish_reason", resp.choices[0].finish_reason, "stop")
    return f"{resp.choices[0].message.content!r} from {resp.model}"


def chutes_stream() -> str:
    stream = chutes_client().chat.completions.create(
        model=SLUG, messages=ask("interop e2ee stream"), stream=True
    )
    # The README's loop, verbatim but for collecting instead of printing: it
    # indexes `choices[0]` of every chunk the SDK yields.
    text, models = "", set()
    for chunk in stream:
        if chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
        models.add(chunk.model)
    expect("streamed content", text, "chutes says: interop e2ee stream")
    expect("chunk models", models, {SLUG})
    return f"{text!r} decrypted by the client"


def chutes_raw_wire() -> str:
    """The gateway's discovery answers, as the real client parses them."""
    with httpx.Client(timeout=TIMEOUT) as http:
        auth = {"Authorization": f"Bearer {API_KEY}"}
        models = http.get(f"{CHUTES_URL}/v1/models", headers=auth).json()["data"]
        entry = next(m for m in models if m["id"] == SLUG)
        listing = http.get(
            f"{CHUTES_URL}/e2e/instances/{entry['chute_id']}", headers=auth
        ).json()
    instances = listing["instances"]
    if not instances or not all(i["nonces"] for i in instances):
        raise Failed(f"no instance with nonces: {listing!r}")
    if not isinstance(listing.get("nonce_expires_in"), (int, float)):
        raise Failed("nonce_expires_in missing")
    return f"chute_id {entry['chute_id']}, {len(instances)} instances"


# -------------------------------------------------------------------- router


def router_client() -> OpenAI:
    return OpenAI(
        api_key="unused", base_url=f"{ROUTER_URL}/v1", max_retries=0, timeout=TIMEOUT
    )


def router_json_fallback() -> str:
    resp = router_client().chat.completions.create(
        model=CANONICAL, messages=ask("interop router json")
    )
    expect("content", resp.choices[0].message.content, "chutes says: interop router json")
    expect("model", resp.model, CANONICAL)
    return f"{resp.choices[0].message.content!r} as {resp.model} (NEAR 503, Chutes served)"


def router_stream_fallback() -> str:
    stream = router_client().chat.completions.create(
        model=CANONICAL, messages=ask("interop router stream"), stream=True
    )
    text, models, bare = collect(stream)
    expect("streamed content", text, "chutes says: interop router stream")
    expect("chunk models", set(models), {CANONICAL})
    expect("chunks without choices", bare, 0)
    return f"{text!r} in {len(models)} chunks, all {CANONICAL}"


def router_json_near() -> str:
    raw = router_client().chat.completions.with_raw_response.create(
        model=CANONICAL, messages=ask("interop router near")
    )
    expect("x-serving-provider", raw.headers.get("x-serving-provider"), "near")
    resp = raw.parse()
    expect("content", resp.choices[0].message.content, "near-1 says: interop router near")
    expect("model", resp.model, CANONICAL)
    return f"{resp.choices[0].message.content!r} as {resp.model} (NEAR healthy again, x-serving-provider: near)"


def router_unknown_model() -> str:
    try:
        router_client().chat.completions.create(
            model="no-such/model", messages=ask("interop unknown")
        )
    except BadRequestError as e:
        expect("status", e.status_code, 400)
        expect("type", e.type, "invalid_request_error")
        expect("param", e.param, "model")
        expect("code", e.code, None)
        return f"BadRequestError 400, param {e.param!r}: {e.message}"
    raise Failed("an unknown model was not refused")


def router_unknown_path() -> str:
    resp = httpx.get(f"{ROUTER_URL}/v1/nonexistent", timeout=TIMEOUT)
    expect("status", resp.status_code, 404)
    expect("x-should-retry", resp.headers.get("x-should-retry"), "false")
    expect("error type", resp.json()["error"]["type"], "invalid_request_error")
    return "404 with x-should-retry: false"


CHECKS = [
    ("chutes gateway discovery (raw)", chutes_raw_wire),
    ("chutes-e2ee JSON completion", chutes_json),
    ("chutes-e2ee streamed completion", chutes_stream),
    ("openai -> router JSON (Chutes fallback)", router_json_fallback),
    ("openai -> router stream (Chutes fallback)", router_stream_fallback),
    ("openai -> router JSON (NEAR)", router_json_near),
    ("openai -> router unknown model (400, param model)", router_unknown_model),
    ("router unknown path (x-should-retry)", router_unknown_path),
]


def main() -> int:
    passed = failed = 0
    for name, check in CHECKS:
        try:
            detail = check()
        except Exception as e:  # noqa: BLE001 - report every failure the same way
            failed += 1
            print(f"FAIL {name}: {type(e).__name__}: {e}", flush=True)
            traceback.print_exc(limit=4)
        else:
            passed += 1
            print(f"ok   {name}: {detail}", flush=True)
    print(f"interop: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
