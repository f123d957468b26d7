"""Settings: one TOML file, any top-level key overridable by ``POLLER_<KEY>``, validated once.

``load_settings`` either returns a complete, valid ``Settings`` or raises ``ConfigError`` whose text
is one line naming the offending key, so that ``run`` never starts half-configured.
"""

from __future__ import annotations

import os
import ssl
import tomllib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal, Self
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from poller.errors import ConfigError
from poller.models import CLUSTER_NAME

#: ONTAP deletes a finished job about 300 s after it ends; a slower re-poll could miss the end.
MAX_POLL_INTERVAL_S = 240.0
DEFAULT_AMQP_URL = "amqp://guest:guest@localhost:5672/"
_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})


def _parse_verify(value: Any) -> bool | str:
    """``verify`` is a bool or a CA bundle path; env vars arrive as strings like ``"false"``."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        if not Path(value).is_file():
            raise ValueError(f"CA bundle {value!r} is not a readable file")
        return value
    raise ValueError("must be true, false or the path of a CA bundle")


#: ``verify`` of a cluster, in TOML or as an env string.
TlsVerify = Annotated[bool | str, BeforeValidator(_parse_verify)]


class ClusterSettings(BaseModel):
    """One ONTAP cluster the worker may contact. No other host is ever called."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: Annotated[
        str,
        Field(description="Base URL of the cluster; jobs are read from `{url}/api/cluster/jobs`."),
    ]
    username: Annotated[str, Field(description="User for HTTP basic auth.")]
    password: Annotated[
        SecretStr | None,
        Field(description="Password for basic auth; give this or `password_file`, not both."),
    ] = None
    password_file: Annotated[
        Path | None,
        Field(description="File holding the password (a trailing newline is ignored)."),
    ] = None
    verify: Annotated[
        TlsVerify,
        Field(description="Verify TLS: `true`, `false`, or the path of a CA bundle (PEM)."),
    ] = True
    max_concurrent_requests: Annotated[
        int, Field(ge=1, le=256, description="HTTP calls to this cluster at once.")
    ] = 6
    batch: Annotated[
        bool,
        Field(
            description="Read many due jobs per call (`uuid=a|b|...`); `false`: one GET per job."
        ),
    ] = True
    request_timeout: Annotated[
        float, Field(gt=0, le=600, description="Seconds allowed for one HTTP call.")
    ] = 30.0
    feed: Annotated[
        bool,
        Field(
            description="Learn of changes with a fixed number of calls per tick (the change "
            "feed: `end_time` and `state` filters); `false`: read watched jobs by uuid alone."
        ),
    ] = True
    discover: Annotated[
        bool,
        Field(
            description="Publish every job of this cluster, watched or not (one worker at a "
            "time discovers a cluster; the others stand by)."
        ),
    ] = False

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("https://", "http://")):
            raise ValueError("must start with https:// (or http://)")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _one_password(self) -> Self:
        if (self.password is None) == (self.password_file is None):
            raise ValueError("give exactly one of password and password_file")
        return self

    def secret(self) -> str:
        """The password, read from ``password_file`` when that is how it was given."""
        if self.password is not None:
            return self.password.get_secret_value()
        assert self.password_file is not None  # guaranteed by _one_password
        # Docker and Kubernetes secrets end with a newline that is not part of the password.
        return self.password_file.read_text(encoding="utf-8").rstrip("\r\n")


class EnvCluster(BaseModel):
    """One cluster by environment alone (``POLLER_ONTAP_*``), as compose files give it.

    Checked as a ``ClusterSettings`` when merged, with errors naming the ``ontap_*`` key.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    url: Annotated[str | None, Field(description="Its `url`; set it to turn the shortcut on.")] = (
        None
    )
    username: Annotated[str | None, Field(description="Its `username`.")] = None
    password: Annotated[
        SecretStr | None, Field(description="Its `password` (or use `ontap_password_file`).")
    ] = None
    password_file: Annotated[
        Path | None, Field(description="Its `password_file`, e.g. a Docker secret.")
    ] = None
    verify: Annotated[TlsVerify, Field(description="Its `verify`.")] = True
    name: Annotated[str, Field(description="Its cluster name.")] = "default"


#: The environment ``load_settings`` was asked to read, when not the process's own.
_ENVIRON: ContextVar[Mapping[str, str] | None] = ContextVar("poller_environ", default=None)


class Settings(BaseSettings):
    """Everything the worker and the CLI read from configuration (INTERFACE §2)."""

    model_config = SettingsConfigDict(
        env_prefix="POLLER_",
        # POLLER_ONTAP_URL -> ontap.url, POLLER_ONTAP_PASSWORD_FILE -> ontap.password_file.
        env_nested_delimiter="_",
        env_nested_max_split=1,
        extra="forbid",
        frozen=True,
        case_sensitive=False,
    )

    amqp_url: Annotated[
        list[str],
        NoDecode,  # POLLER_AMQP_URL is comma-separated, not JSON
        Field(
            repr=False,
            description="The RabbitMQ broker: one URL (`amqp://` or `amqps://`), or a list of "
            "the nodes of one cluster, tried in turn (env: comma-separated).",
        ),
    ] = [DEFAULT_AMQP_URL]
    amqp_ca_file: Annotated[
        Path | None,
        Field(
            description="CA bundle (PEM) that signed the broker's certificate, for `amqps://`; "
            "unset: the system's CAs."
        ),
    ] = None
    amqp_cert_file: Annotated[
        Path | None,
        Field(description="Client certificate (PEM) to present to the broker over `amqps://`."),
    ] = None
    amqp_key_file: Annotated[
        Path | None,
        Field(description="Key of `amqp_cert_file`, if not in the same file."),
    ] = None
    amqp_password_file: Annotated[
        Path | None,
        Field(
            description="File holding the broker password (a trailing newline is ignored); "
            "it replaces the password of every `amqp_url`."
        ),
    ] = None
    watch_queue: Annotated[str, Field(description="Queue of watch requests.")] = "ontap.jobs.watch"
    dead_letter_queue: Annotated[
        str, Field(description="Where rejected watch requests go, with `x-poller-error`.")
    ] = "ontap.jobs.watch.dead"
    events_exchange: Annotated[
        str, Field(description="Durable topic exchange the events are published to.")
    ] = "ontap.jobs"
    poll_interval_min: Annotated[
        float, Field(gt=0, description="Seconds before the first re-poll of an unchanged job.")
    ] = 1.0
    poll_interval_max: Annotated[
        float,
        Field(
            gt=0,
            le=MAX_POLL_INTERVAL_S,
            description="Cap of the re-poll backoff, seconds; at most 240 "
            "(ONTAP deletes finished jobs about 300 s after they end).",
        ),
    ] = 30.0
    watch_timeout: Annotated[
        float, Field(gt=0, description="Default deadline of a watch, seconds.")
    ] = 86400.0
    checkpoint_interval: Annotated[
        float,
        Field(
            gt=0,
            description="Seconds between re-enqueues of a watch with its progress; keep it "
            "below the broker's consumer timeout (30 min by default).",
        ),
    ] = 600.0
    # The AMQP prefetch count is a 16-bit field, hence the upper bound.
    max_watches: Annotated[
        int,
        Field(ge=1, le=65535, description="Concurrent watches per worker (the consumer prefetch)."),
    ] = 10000
    publish_progress: Annotated[
        bool,
        Field(description="Also publish `progress.*` when a running job's `message` changes."),
    ] = False
    http_port: Annotated[
        int,
        Field(ge=0, le=65535, description="Port of `/metrics`, `/healthz`, `/readyz`; `0`: off."),
    ] = 9102
    log_format: Annotated[
        Literal["auto", "json", "console"],
        Field(description="`json`, `console`, or `auto` (console on a terminal, else JSON)."),
    ] = "auto"
    clusters: dict[str, ClusterSettings] = Field(
        default_factory=dict, description="The ONTAP clusters, one `[clusters.NAME]` table each."
    )

    # The single-cluster shortcut for compose: POLLER_ONTAP_URL and friends (``ontap_*``).
    ontap: EnvCluster | None = Field(
        default=None,
        description="One cluster by environment alone (`POLLER_ONTAP_*`), added to `clusters`.",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The TOML file arrives as init kwargs; the environment overrides it. Tests and callers
        # of load_settings may name an environment of their own instead of the process's.
        environ = _ENVIRON.get()
        env = env_settings if environ is None else _MappingEnvSource(settings_cls, environ)
        return env, init_settings

    @field_validator("amqp_url", mode="before")
    @classmethod
    def _amqp_url_list(cls, value: Any) -> Any:
        """One string (from TOML or env) may name several nodes, separated by commas."""
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("amqp_url")
    @classmethod
    def _amqp_url(cls, value: list[str]) -> list[str]:
        # The messages never echo a URL: it may hold a password.
        if not value:
            raise ValueError("names no node")
        for number, url in enumerate(value, start=1):
            node = f"node {number}" if len(value) > 1 else "the URL"
            if not url.startswith(("amqp://", "amqps://")):
                raise ValueError(f"{node} must start with amqp:// or amqps://")
            if not urlsplit(url).hostname:
                raise ValueError(f"{node} names no host")
        return value

    @field_validator("clusters")
    @classmethod
    def _cluster_names(cls, value: dict[str, ClusterSettings]) -> dict[str, ClusterSettings]:
        for name in value:
            if not CLUSTER_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a cluster name ([a-z0-9][a-z0-9_-]{{0,62}})")
        return value

    @model_validator(mode="before")
    @classmethod
    def _merge_env_cluster(cls, data: Any) -> Any:
        """Move the ``POLLER_ONTAP_*`` cluster into ``clusters`` before anything is validated."""
        if not isinstance(data, dict) or not isinstance(data.get("ontap"), dict):
            return data
        data = dict(data)
        values = dict(data.pop("ontap"))
        if values.get("url") is None:
            return data  # the shortcut is off until POLLER_ONTAP_URL names a cluster
        name = values.pop("name", "default")
        if not isinstance(name, str) or not CLUSTER_NAME.fullmatch(name):
            raise ValueError(f"ontap_name: {name!r} is not a cluster name")
        clusters = dict(data.get("clusters") or {})
        if name in clusters:
            raise ValueError(f"ontap_name: cluster {name!r} is also in [clusters]")
        if values.get("username") is None:
            raise ValueError("ontap_username: required with ontap_url")
        try:
            clusters[name] = ClusterSettings.model_validate(values)
        except ValidationError as exc:
            # Name the variables the operator sets, not the fields of the cluster model.
            err = exc.errors()[0]
            field = str(err["loc"][0]) if err["loc"] else "password"
            message = str(err["msg"]).removeprefix("Value error, ")
            raise ValueError(f"ontap_{field}: {message}") from None
        data["clusters"] = clusters
        return data

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.poll_interval_min > self.poll_interval_max:
            raise ValueError("poll_interval_min must not exceed poll_interval_max")
        return self

    def cluster_names(self) -> frozenset[str]:
        return frozenset(self.clusters)

    def require_clusters(self) -> None:
        """``run`` refuses to start without a cluster: it would consume and dead-letter everything."""
        if not self.clusters:
            raise ConfigError(
                "clusters: no cluster configured; add a [clusters.NAME] table or set POLLER_ONTAP_URL"
            )


def env_variables() -> frozenset[str]:
    """Every ``POLLER_*`` variable the settings read, ``POLLER_CONFIG`` aside."""
    top = {f"POLLER_{name.upper()}" for name in Settings.model_fields if name != "ontap"}
    shortcut = {f"POLLER_ONTAP_{name.upper()}" for name in EnvCluster.model_fields}
    return frozenset(top | shortcut)


def load_settings(
    path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Read ``path`` (or ``$POLLER_CONFIG``), apply ``POLLER_*`` overrides, validate everything."""
    env = os.environ if environ is None else environ
    path = path or env.get("POLLER_CONFIG") or None
    data = _read_toml(Path(path)) if path else {}
    try:
        with _environment(environ):
            settings = Settings(**data)
        for name, cluster in settings.clusters.items():
            _check_password_file(name, cluster)
        _check_amqp_files(settings)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc)) from None
    except SettingsError as exc:
        # An env override that is not parsable, e.g. POLLER_CLUSTERS that is not JSON.
        raise ConfigError(f"config: {exc}") from None
    return settings


@contextmanager
def _environment(environ: Mapping[str, str] | None) -> Iterator[None]:
    token = _ENVIRON.set(environ)
    try:
        yield
    finally:
        _ENVIRON.reset(token)


class _MappingEnvSource(EnvSettingsSource):
    """pydantic-settings' environment source, reading a given mapping instead of ``os.environ``."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        if self.case_sensitive:
            return dict(self._environ)
        return {key.lower(): value for key, value in self._environ.items()}


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config: file {str(path)!r} not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config: {path} is not valid TOML: {exc}") from None


def _check_password_file(name: str, cluster: ClusterSettings) -> None:
    if cluster.password_file is None:
        return
    try:
        secret = cluster.secret()
    except OSError as exc:
        raise ConfigError(
            f"clusters.{name}.password_file: cannot read {str(cluster.password_file)!r}: "
            f"{exc.strerror}"
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(
            f"clusters.{name}.password_file: {str(cluster.password_file)!r} is not UTF-8"
        ) from None
    if not secret:
        raise ConfigError(f"clusters.{name}.password_file: {str(cluster.password_file)!r} is empty")


def _check_amqp_files(settings: Settings) -> None:
    """The broker's TLS files and password file exist, can be read, and hold what they should."""
    ca, cert, key = settings.amqp_ca_file, settings.amqp_cert_file, settings.amqp_key_file
    for name, path in (("amqp_ca_file", ca), ("amqp_cert_file", cert), ("amqp_key_file", key)):
        if path is None:
            continue
        _readable(name, path)
        if not any(url.startswith("amqps://") for url in settings.amqp_url):
            raise ConfigError(f"{name}: TLS files need an amqps:// amqp_url")
    if key is not None and cert is None:
        raise ConfigError("amqp_key_file: needs amqp_cert_file")
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if ca is not None:
        try:
            context.load_verify_locations(cafile=str(ca))
        except ssl.SSLError:
            raise ConfigError(f"amqp_ca_file: {str(ca)!r} holds no PEM certificate") from None
    if cert is not None:
        try:
            context.load_cert_chain(str(cert), str(key) if key is not None else None)
        except ssl.SSLError as exc:
            if key is None:
                raise ConfigError(
                    f"amqp_cert_file: {str(cert)!r} is not a PEM certificate followed by its "
                    "private key (give amqp_key_file when the key is apart)"
                ) from None
            raise ConfigError(
                f"amqp_key_file: {str(key)!r} is not the PEM private key of amqp_cert_file "
                f"({exc.reason or 'unreadable'})"
            ) from None
    secret = settings.amqp_password_file
    if secret is not None:
        text = _readable("amqp_password_file", secret)
        if not text.rstrip("\r\n"):
            raise ConfigError(f"amqp_password_file: {str(secret)!r} is empty")


def _readable(name: str, path: Path) -> str:
    """The text of ``path``; ``ConfigError`` naming the key when it cannot be read."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read {str(path)!r}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{name}: {str(path)!r} is not UTF-8 text") from None


def _one_line(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        key = ".".join(str(part) for part in err["loc"]) or "config"
        message = str(err["msg"]).removeprefix("Value error, ")
        parts.append(f"{key}: {message}")
    return "; ".join(parts)
