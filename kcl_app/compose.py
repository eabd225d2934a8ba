"""The composition root: the one place where boto3 sessions, clients and the engine are built.

Everything else receives its clients, clock and sinks as constructor arguments.

Credentials and regions follow the standard chain (environment, `AWS_PROFILE`, shared files, SSO,
instance roles); `configure_aws(profile, region)` (the CLI's global `--profile`/`--region`) sets
the base session every client here is built from. A region written in targets.toml (a target's
`region`, `[source] region`) wins over the default region.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import tempfile
import threading
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import boto3
import botocore.session
from botocore.config import Config as BotoConfig
from botocore.credentials import AssumeRoleCredentialFetcher, DeferredRefreshableCredentials
from botocore.exceptions import ProfileNotFound

from kcl_app.adapters.clock import SystemClock
from kcl_app.adapters.control import ControlTable, PausedTargets
from kcl_app.adapters.dead_letters import DirectoryDeadLetters, RoutedDeadLetters, S3Payloads, SqsDeadLetters
from kcl_app.adapters.export import DynamoImports, S3Exports
from kcl_app.adapters.inline import InlineWriter, ensure_tombstones
from kcl_app.adapters.lanes import Lanes, LaneSettings
from kcl_app.adapters.ledger import LedgerWriter, ensure_ledger
from kcl_app.adapters.metrics import EmfMetrics
from kcl_app.adapters.scan import TargetSpec
from kcl_app.adapters.wire_client import WireSender
from kcl_app.config import Config, DeadLetterConfig, TargetConfig
from kcl_app.core.checks import KeySchema
from kcl_app.core.errors import ConfigError
from kcl_app.pipeline import POISON_STORE, UNMAPPED_STORE, Pipeline
from kcl_app.ports import Clock, DeadLetterSink, Metrics, TargetWriter
from kcl_app.preflight import Clients as PreflightClients
from kcl_app.redrive import RedriveReport, Reread, auto_redrive
from kcl_app.verify import Verifier

if TYPE_CHECKING:
    from types_boto3_dynamodb import DynamoDBClient
    from types_boto3_kinesis import KinesisClient
    from types_boto3_s3 import S3Client
    from types_boto3_sqs import SQSClient

log = logging.getLogger("tablesync.compose")


@dataclass(frozen=True)
class AwsSettings:
    """The process-wide AWS defaults: a named profile and a default region (None: the standard chain)."""

    profile: str | None = None
    region: str | None = None


_aws = AwsSettings()


def configure_aws(profile: str | None = None, region: str | None = None) -> None:
    """Set the profile and default region of every session built from now on (the CLI calls it once).

    Child processes (the KCL daemon and its record processors) get the same through their
    environment: `tablesync run` passes `AWS_PROFILE`/`AWS_REGION` on."""
    global _aws
    _aws = AwsSettings(profile or None, region or None)


def default_region() -> str | None:
    """`--region`, else `AWS_REGION` (which botocore itself does not read), else None: botocore then
    takes `AWS_DEFAULT_REGION` or the profile's region."""
    return _aws.region or os.environ.get("AWS_REGION") or None


_LOADER: Any = None  # the process's one botocore data loader (see `core_session`)
_LOADER_LOCK = threading.Lock()


def core_session() -> botocore.session.Session:
    """A new botocore session that shares the process's one data loader.

    The loader caches what it parses: the service models, their endpoint rules and botocore's
    endpoints.json (~20 MB as parsed objects, loaded by every session that creates a client). A
    session of its own per client kind (source, each target, an assumed role, the verifier's) would
    parse its own copy; sharing the loader keeps one. Sessions stay separate (botocore sessions are
    not shared across threads); their loader is read-mostly and caches by key."""
    global _LOADER
    core = botocore.session.Session()
    with _LOADER_LOCK:
        if _LOADER is None:
            _LOADER = core.get_component("data_loader")
        else:
            core.register_component("data_loader", _LOADER)
    return core


def _boto3_session(core: botocore.session.Session | None = None, **kwargs: Any) -> boto3.Session:
    session = boto3.Session(botocore_session=core or core_session(), **kwargs)
    with _LOADER_LOCK:  # boto3 appends its own data path to the loader per session: keep it once
        paths = _LOADER.search_paths
        paths[:] = list(dict.fromkeys(paths))
    return session


def base_session() -> boto3.Session:
    """A session with the configured profile and default region. Raises botocore's ProfileNotFound."""
    session = _boto3_session(profile_name=_aws.profile, region_name=default_region())
    if _aws.profile and _aws.profile not in session.available_profiles:
        raise ProfileNotFound(profile=_aws.profile)  # said now, not at the first call
    return session


def env_session(env: Mapping[str, str], region: str | None) -> boto3.Session:
    """A session from a child process's environment (the daemon's credentials and region), for
    the supervisor that runs beside it."""
    return _boto3_session(aws_access_key_id=env.get("AWS_ACCESS_KEY_ID"),
                          aws_secret_access_key=env.get("AWS_SECRET_ACCESS_KEY"),
                          aws_session_token=env.get("AWS_SESSION_TOKEN"), region_name=region)


def call_timeouts(budget_seconds: float) -> tuple[float, float]:
    """(connect, read) timeouts of one call to a target, derived from its retry budget: a call to a
    silent endpoint ends well inside the budget, so the budget is honoured within one call's timeout
    (a write is never started after the deadline: see the ledger and inline writers)."""
    return min(3.0, max(0.5, budget_seconds / 10)), min(10.0, max(1.0, budget_seconds / 6))


def boto_config(max_pool: int = 32, timeout: float = 10.0, connect_timeout: float | None = None) -> BotoConfig:
    # Our writers own retries (budget, parking); botocore retrying underneath would hide time.
    # `total_max_attempts` counts every attempt (1: no retry); botocore reads `max_attempts` as
    # the number of RETRIES, so `max_attempts: 1` would double the time of a call that times out.
    return BotoConfig(
        retries={"mode": "standard", "total_max_attempts": 1},
        max_pool_connections=max_pool,
        connect_timeout=timeout if connect_timeout is None else connect_timeout,
        read_timeout=timeout,
        # Requests are built by our own code from validated records; botocore's client-side
        # validation costs ~30% of the client CPU per write and catches nothing here.
        parameter_validation=False,
    )


def session_for(target: TargetConfig, base: boto3.Session | None = None) -> boto3.Session:
    """A session for a target: the worker's own credentials, or an assumed role refreshed before expiry.

    botocore refreshes DeferredRefreshableCredentials ahead of expiry (its advisory and mandatory
    refresh windows), so long-running workers never write with expired credentials."""
    base = base or base_session()
    if not target.role_arn:
        return base
    extra: dict[str, Any] = {"RoleSessionName": f"tablesync-{target.name}"[:64]}
    if target.external_id:
        extra["ExternalId"] = target.external_id
    sts_endpoint = target.endpoint_url

    def client_creator(service: str, **kwargs: Any) -> Any:
        if sts_endpoint and "endpoint_url" not in kwargs:
            kwargs["endpoint_url"] = sts_endpoint
        make: Callable[..., Any] = base.client  # any service, by name: the overloads cannot be chosen here
        return make(service, region_name=target.region, **kwargs)

    fetcher = AssumeRoleCredentialFetcher(
        client_creator=client_creator,
        source_credentials=base.get_credentials(),
        role_arn=target.role_arn,
        extra_args=extra,
    )
    core = core_session()  # one parsed copy of the service models and endpoint data per process
    # the documented way to plug a credential provider; botocore's stubs do not declare the attribute
    core._credentials = DeferredRefreshableCredentials(  # type: ignore[attr-defined]  # noqa: SLF001
        refresh_using=fetcher.fetch_credentials, method="assume-role"
    )
    return _boto3_session(core, region_name=target.region)


def dynamodb_client(target: TargetConfig, session: boto3.Session | None = None) -> DynamoDBClient:
    session = session or session_for(target)
    return session.client(
        "dynamodb",
        region_name=target.region,
        endpoint_url=target.endpoint_url,
        config=target_boto_config(target),
    )


def target_boto_config(target: TargetConfig) -> BotoConfig:
    """A target's client settings: no hidden retries, and timeouts derived from its retry budget."""
    connect, read = call_timeouts(target.retry_budget_seconds)
    return boto_config(max_pool=max(10, target.max_concurrency * 2), timeout=read, connect_timeout=connect)


def source_dynamodb(config: Config, max_pool: int = 64) -> DynamoDBClient:
    """A DynamoDB client for the source side (the worker's own credentials, `[source]` region and endpoint)."""
    return base_session().client("dynamodb", region_name=config.source_region or default_region(),
                                 endpoint_url=config.source_endpoint_url, config=boto_config(max_pool=max_pool))


def source_kinesis(config: Config) -> KinesisClient:
    """A Kinesis client for the source side (its stream is in the source's region)."""
    return base_session().client("kinesis", region_name=config.source_region or default_region(),
                                 endpoint_url=config.source_endpoint_url, config=boto_config())


def seed_ports(config: Config, target: TargetConfig, clock: Clock) -> tuple[S3Exports, DynamoImports]:
    """The clients of `tablesync seed`: the export and its S3 bucket on the source side (the worker's
    credentials, `[source]` region and endpoint), ImportTable in the target's account and region."""
    region = config.source_region or default_region()
    s3 = base_session().client("s3", region_name=region, endpoint_url=config.source_endpoint_url,
                               config=boto_config(timeout=60.0))
    return S3Exports(source_dynamodb(config, max_pool=16), s3, clock), DynamoImports(dynamodb_client(target), clock)


def fence_table_of(target: TargetConfig) -> str:
    """The table beside the target that holds its fence: the ledger (exact) or the tombstones (inline)."""
    return target.tombstones if target.mode == "inline" else target.ledger


def target_specs(config: Config, names: Sequence[str] | None, source_table: str | None = None,
                 prepare: bool = False) -> list[TargetSpec]:
    """TargetSpecs (what backfill and verify scan with) for the named targets (all when None),
    optionally only those of `source_table`; `prepare` creates missing ledgers (tombstone tables) first."""
    chosen = [config.target(n) for n in names] if names else list(config.targets)
    if source_table is not None:
        chosen = [t for t in chosen if t.source_table == source_table]
    specs = []
    for target in chosen:
        client = dynamodb_client(target)
        if prepare and target.create_ledger:
            (ensure_ledger if target.mode == "exact" else ensure_tombstones)(client, fence_table_of(target))
        specs.append(TargetSpec.from_config(target, config, client))
    return specs


def preflight_clients(config: Config, endpoint_url: str | None = None) -> PreflightClients:
    """The clients `tablesync check` (and run/backfill/verify before they start) talk to.

    `endpoint_url` (`--endpoint`: an emulator) applies where the config names no endpoint."""
    if endpoint_url:
        config = dataclasses.replace(
            config, source_endpoint_url=config.source_endpoint_url or endpoint_url,
            targets=tuple(dataclasses.replace(t, endpoint_url=t.endpoint_url or endpoint_url)
                          for t in config.targets))
    return PreflightClients(source_dynamodb(config, max_pool=10), source_kinesis(config),
                            {t.name: dynamodb_client(t) for t in config.targets})


@dataclass(frozen=True)
class LeaseClients:
    """What `status` reads: the lease table's DynamoDB and the stream's Kinesis, in one region."""

    dynamodb: DynamoDBClient
    kinesis: KinesisClient
    region: str


def lease_clients(region: str | None = None, endpoint_url: str | None = None) -> LeaseClients:
    """Clients for a KCL application's region (`region`, else the default region or the chain).

    Raises botocore's NoRegionError when no region is known from anywhere."""
    session = base_session()
    dynamodb = session.client("dynamodb", region_name=region or default_region(), endpoint_url=endpoint_url,
                              config=boto_config())
    kinesis = session.client("kinesis", region_name=region or default_region(), endpoint_url=endpoint_url,
                             config=boto_config())
    return LeaseClients(dynamodb, kinesis, dynamodb.meta.region_name)


def make_writer(target: TargetConfig, config: Config, clock: Clock, client: DynamoDBClient | None = None,
                prepare: bool = True) -> TargetWriter:
    client = client or dynamodb_client(target)
    inline = target.mode == "inline"
    fence_table = fence_table_of(target)
    if prepare and target.create_ledger:
        try:
            (ensure_tombstones if inline else ensure_ledger)(client, fence_table)
        except Exception as exc:  # the target may be down at start: its writes will park
            log.warning("target %s: cannot prepare %s now (%s); changes will park until it exists",
                        target.name, fence_table, exc)
    if inline:
        return InlineWriter(target.name, client, target.table, clock, target.version_attribute,
                            max_concurrency=max(4, target.max_concurrency * 4), tombstone_table=fence_table,
                            tombstone_ttl_seconds=config.tombstone_ttl_seconds, wire=WireSender.for_client(client))
    return LedgerWriter(target.name, client, target.table, target.ledger, clock,
                        tombstone_ttl_seconds=config.tombstone_ttl_seconds,
                        max_concurrency=target.max_concurrency, wire=WireSender.for_client(client))


_QUEUE_HOST = re.compile(r"^(?:sqs\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?|([a-z0-9-]+)\.queue\.amazonaws\.com)$")


def queue_region(queue_url: str) -> str | None:
    """The region in an SQS queue URL (`https://sqs.<region>.amazonaws.com/...`, or the legacy
    `https://<region>.queue.amazonaws.com/...`); None for other hosts, such as an emulator's."""
    match = _QUEUE_HOST.match(urllib.parse.urlsplit(queue_url).hostname or "")
    return (match.group(1) or match.group(2)) if match else None


def make_dead_letters(config: Config, base_dir: str | None = None) -> DeadLetterSink:
    """A sink that routes each store to its target's dead-letter settings.

    `_poison` and `_unmapped` (records that belong to no target) go to the first target's store.
    Relative directory paths are relative to the config file's folder."""
    if base_dir is None and os.path.isfile(config.origin):
        base_dir = os.path.dirname(os.path.abspath(config.origin))
    built: dict[DeadLetterConfig, DeadLetterSink] = {}

    def sink_for(target: TargetConfig) -> DeadLetterSink:
        settings = target.dead_letter
        if settings not in built:
            if settings.kind == "dir":
                root = settings.path
                if base_dir and not os.path.isabs(root):
                    root = os.path.join(base_dir, root)
                built[settings] = DirectoryDeadLetters(root)
            else:
                region = settings.region or queue_region(str(settings.queue_url)) or target.region
                session = base_session()
                client: SQSClient = session.client("sqs", region_name=region, endpoint_url=settings.endpoint_url,
                                                   config=boto_config())
                payloads = None
                if settings.payload_bucket:
                    s3: S3Client = session.client("s3", region_name=region, endpoint_url=settings.endpoint_url,
                                                  config=boto_config())
                    payloads = S3Payloads(s3, settings.payload_bucket, settings.payload_prefix)
                built[settings] = SqsDeadLetters(client, {}, default_url=settings.queue_url, payloads=payloads)
        return built[settings]

    routes = {t.name: sink_for(t) for t in config.targets}
    return RoutedDeadLetters(routes, default=routes[config.targets[0].name])


@dataclass
class Engine:
    config: Config
    pipeline: Pipeline
    writers: Mapping[str, TargetWriter]
    dead_letters: DeadLetterSink

    def close(self) -> None:
        self.pipeline.close()
        for writer in self.writers.values():
            close = getattr(writer, "close", None)
            if close:
                close()


def learn_key_schemas(config: Config, clients: Mapping[str, Any], source: Any | None = None,
                      session: boto3.Session | None = None) -> dict[str, KeySchema]:
    """The key schema of every source table, once per process: from `[source.key_schema]`, else
    DescribeTable of the source table, else (a source out of reach, e.g. no endpoint for it) of a
    target table of it, whose key schema must equal the source's for replication to work at all.

    Raises ConfigError naming what was tried when a schema cannot be learned."""
    learned: dict[str, KeySchema] = dict(config.key_schemas)
    for table in sorted({t.source_table for t in config.targets} - set(learned)):
        tried = []
        candidates: list[tuple[str, Any, str]] = []
        if source is None:
            # one attempt, short timeouts: an unreachable source (no endpoint for it here, no
            # DescribeTable permission) must not delay the start; the targets are asked next
            # from the targets' session when given: one parsed copy of the service models
            # without a [source] region the worker's default, else the first target's: botocore
            # refuses to build a client with no region at all
            region = config.source_region or default_region() or next(
                (t.region for t in config.targets if t.source_table == table), None)
            source = (session or boto3).client(
                "dynamodb", region_name=region, endpoint_url=config.source_endpoint_url,
                config=BotoConfig(retries={"total_max_attempts": 1}, connect_timeout=2, read_timeout=5))
        candidates.append((f"source table {table}", source, table))
        candidates += [(f"target {t.name} table {t.table}", clients[t.name], t.table)
                       for t in config.targets if t.source_table == table]
        for label, client, name in candidates:
            try:
                learned[table] = KeySchema.from_describe(client.describe_table(TableName=name)["Table"])
                break
            except Exception as exc:  # noqa: BLE001 - any failure: try the next, report them all
                tried.append(f"{label}: {type(exc).__name__}: {str(exc)[:160]}")
        else:
            raise ConfigError(f"{config.origin}: source.key_schema",
                              f"cannot learn the key schema of source table {table!r} ({'; '.join(tried)}); "
                              f'set it, e.g. [source.key_schema] {table} = ["pk:S"]')
        log.info("source table %s: key schema %s", table, learned[table])
    return learned


def build_engine(config: Config, *, clock: Clock | None = None, metrics: Metrics | None = None,
                 dead_letters: DeadLetterSink | None = None, clients: Mapping[str, DynamoDBClient] | None = None,
                 prepare: bool = True, unmapped: Literal["skip", "park"] | None = None,
                 source_client: Any | None = None) -> Engine:
    """The engine for `config`: a writer per target, the dead-letter routing and the pipeline.

    `unmapped` overrides the config's choice for records of tables no target wants (redrive of a
    stream-wide store passes "park", so that what is still unmapped stays in the store).
    `prepare`: create missing ledgers and learn the source tables' key schemas (see
    learn_key_schemas); without it only `[source.key_schema]` is checked against records."""
    clock = clock or SystemClock()
    metrics = metrics or EmfMetrics(namespace=config.metrics_namespace)
    dead_letters = dead_letters or make_dead_letters(config)
    # One base session for every target: a session per target would parse the service models
    # once per target (~10 MB of RSS each in a shard process).
    base = base_session() if any(t.name not in (clients or {}) for t in config.targets) else None
    target_clients = {t.name: (clients or {}).get(t.name) or dynamodb_client(t, session_for(t, base))
                      for t in config.targets}
    writers = {t.name: make_writer(t, config, clock, target_clients[t.name], prepare) for t in config.targets}
    schemas = (learn_key_schemas(config, target_clients, source_client, base) if prepare
               else dict(config.key_schemas))
    pipeline = Pipeline(
        config.rules(), writers, dead_letters, metrics, clock,
        retry_budget_seconds={t.name: t.retry_budget_seconds for t in config.targets},
        unmapped=unmapped or config.unmapped,
        precision=config.precision,
        checks=config.record_checks(schemas),
    )
    return Engine(config, pipeline, writers, dead_letters)


def heal_lock_dir() -> str:
    """Where the processes of one machine take turns to drain a store (TABLESYNC_LOCK_DIR overrides)."""
    return os.environ.get("TABLESYNC_LOCK_DIR") or os.path.join(tempfile.gettempdir(), f"tablesync-{os.getuid()}")


def build_lanes(config: Config, pipeline: Pipeline, dead_letters: DeadLetterSink, clock: Clock, metrics: Metrics,
                settings: LaneSettings | None = None) -> Lanes:
    """The record processor's per-target lanes, with self-healing through `auto_redrive`: an entry
    too old to replay is settled from the source's current item (the verifier's fenced repair),
    exactly as `tablesync redrive` does."""
    rereads: dict[str, Reread] = {}
    lock = threading.Lock()

    def reread_for(name: str) -> Reread:
        """The heal's reread of `name`: its clients (the source's, the target's for scanning) are
        built by the first entry that needs one, not by every heal round (most find nothing)."""
        if name not in rereads:
            target = config.target(name)
            built: list[tuple[Verifier, TargetSpec]] = []

            def repair(key: dict[str, Any]) -> str:
                with lock:
                    if not built:
                        spec = target_specs(config, [name])[0]
                        built.append((Verifier(source_dynamodb(config), target.source_table, [spec], clock), spec))
                verifier, spec = built[0]
                return verifier.repair_key(spec, key)

            max_age = config.tombstone_ttl_seconds if target.mode == "exact" else None
            rereads[name] = Reread(repair, clock, max_age, config.precision)
        return rereads[name]

    def heal(name: str, limit: int | None = None, budget: float | None = None) -> RedriveReport | None:
        return auto_redrive(pipeline, dead_letters, name, clock=clock, rate=config.target(name).heal_rate,
                            lock_dir=heal_lock_dir(), reread=reread_for(name), metrics=metrics,
                            lock_name=f"{os.path.abspath(config.origin)}:{name}", limit=limit, budget=budget)

    control = control_table(config)
    paused = PausedTargets(control, clock).current if control is not None else (lambda: frozenset[str]())
    return Lanes(pipeline, clock, metrics, settings or LaneSettings(patience=0.5), heal=heal, paused=paused,
                 rate_caps={t.name: t.max_writes_per_second for t in config.targets})


def control_table(config: Config) -> ControlTable | None:
    """The control table of `tablesync pause` (`[control] table`, in the source's region), or None."""
    if config.control_table is None:
        return None
    client = base_session().client("dynamodb", region_name=config.source_region or default_region(),
                                   endpoint_url=config.source_endpoint_url,
                                   config=boto_config(max_pool=4, timeout=5.0, connect_timeout=2.0))
    return ControlTable(client, config.control_table)


__all__ = [
    "POISON_STORE",
    "UNMAPPED_STORE",
    "Engine",
    "base_session",
    "build_engine",
    "build_lanes",
    "configure_aws",
    "control_table",
    "lease_clients",
    "preflight_clients",
    "session_for",
    "source_dynamodb",
    "source_kinesis",
    "target_specs",
]
