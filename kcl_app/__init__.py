"""tablesync: one-way, continuous, version-fenced replication of DynamoDB tables to N targets.

Layers, from the inside out (each imports only the ones below it; the import-linter contracts in
pyproject.toml enforce it in `make test`):

    core/        pure logic: records, versions, plans, attribute values, errors
    ports.py     the Protocols the logic talks through (TargetWriter, DeadLetterSink, Clock, ...)
    config.py    targets.toml as frozen, validated dataclasses
    pipeline.py  one batch in numbered steps, through the ports only
    adapters/    boto3 and KCL implementations of the ports, the scan toolkit, the consumer check
    backfill.py, verify.py, redrive.py   the use cases, independent of each other
    compose.py   the composition root: the only place sessions, clients and the engine are built
    commands/, worker.py, cli.py   the entry points

One target, by the layer that sees it (one name per role; these are not synonyms):

    TargetConfig   config.py        a `[[targets]]` entry as written: region, table, mode, credentials
    TargetRule     core/plan.py     its pure half: which source table, projection, transform, TTL policy
    TargetWriter   ports.py         the port that applies a batch of writes to it, fenced
    TargetSpec     adapters/scan.py what backfill and verify scan with: rule + client + tables
    TargetPlan     core/plan.py     the writes one batch makes for it (output of plan_batch)
    TargetCounts   pipeline.py      what one batch did to it (applied, stale, parked, ...)
    TargetReport   verify.py        what verify found in it (missing, extra, different, repaired)
"""
