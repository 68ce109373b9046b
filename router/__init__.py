"""Router: OpenAI-compatible endpoint with confidence routing and live student switching (flow step 8 in DESIGN.md).

One module per job (each says what it exports):
- `router.settings`  — `RouterSettings` (`STILLFLOW_ROUTER__...`);
- `router.policy`    — pure routing decisions: sticky traces, canary buckets, plan and verdict;
- `router.wire`      — the OpenAI chat-completions format both ways, SSE chunks;
- `router.traces`    — served turns as trace steps, the per-trace book for outcomes;
- `router.teacher`   — the teacher backend (httpx, timeouts, retries, circuit breaker);
- `router.runtime`   — the student runtime (torch: verified safetensors load, greedy turn + log-probs);
- `router.switching` — model slots and the version-event follower (background load, atomic swap);
- `router.emit`      — trace / decision events through the SDK;
- `router.metrics`   — Prometheus metrics; `router.service` — the logic; `router.app` — FastAPI;
- `router.cli`       — `stillflow router`.

`router` imports only `stillflow` (never trainer, streams or sim); torch and transformers load only in
`router.runtime`'s functions.
"""
