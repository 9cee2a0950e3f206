"""HTTP plumbing the gateway's local API and the hub's HQ API share (both FastAPI apps).

It exists because the import contracts keep the hub from importing `edge` and keep the web stack out of
`cloud_bridge`, and both apps need the same request limits and latency middleware: one copy here instead of
two kept "in step" by hand. It imports only `cloud_bridge` of ours (strict JSON, shared with command intake).
"""
