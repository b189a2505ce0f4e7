"""The durable async queue (Redis Streams) and result storage; no HTTP here.

keys (key names) · config (QueueConfig from an Endpoint) · tasks (task record, request, callback target) ·
scripts (Lua state transitions) · pipelining (auto-pipelined hot path) · broker (TaskQueue: submit, claim,
complete; get_task) · worker (the worker loop) · invoke (what the worker needs from the model) · notify (long-poll
wake-ups) · recent (terminal records kept in memory) · results (ResultStore, FilesystemResultStore) ·
s3results (S3ResultStore, presigned result URLs) · callbacks (one delivery attempt, basic/mTLS) · outbox (durable
callback schedule: leased claims, retries across router crashes) · backlog (pending + in flight, for metrics and
autoscaling).
"""
