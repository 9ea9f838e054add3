"""The streaming Q(lambda) agent's parts, for `scripts/stream_q.py`.

Elsayed, Vasan & Mahmood (2024), "Streaming Deep Reinforcement Learning
Finally Works": the stream-x recipe in Haiku. Each part is a small pure
function over arrays, so the whole agent runs in one `lax.scan`:

- `obgd`: the eligibility trace and the overshooting-bounded step (ObGD).
- `normalizers`: running observation normalization and reward scaling.
- `network`: the Q-network, with `alberta.SparseInit` as its `w_init`.

These are example code, not part of the `alberta` package.
"""
