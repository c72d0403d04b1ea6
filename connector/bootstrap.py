"""The one place that turns settings and mapping files into clients, stores and the engine.

A worker process builds one `Runtime` and keeps it: the SDK clients, their
connection pools and the compiled scoring model live as long as the process.
The demo builds one around the sandbox and an embedded store.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis

from connector.config import Settings
from connector.domain import CrmName
from connector.errors import ConfigError, UserError
from connector.mappings.schedule import SyncSchedule
from connector.metrics import Metrics
from connector.retry import RetrySet
from connector.runs import RunStore

if TYPE_CHECKING:
    from connector.crm.base import CrmAdapter
    from connector.echo import EchoFilter
    from connector.engine import ScoringModel
    from connector.learn.store import ActiveModels, ModelStore
    from connector.routing.service import Router


# Python collects its youngest generation every 700 container allocations. Scoring allocates a few
# dozen short-lived containers per lead (results, contributions, reasons), which reference counting
# frees, and almost no cycles: at 700 the collector ran every ~20 leads and took ~5 % of the compiled
# engine's instructions (callgrind over bench/engine.py). A worker process collects every
# YOUNG_COLLECT_AFTER allocations instead; cyclic garbage waits at most that long (a few MB).
YOUNG_COLLECT_AFTER = 50_000


def settle_collector() -> None:
    """For a long-lived process, once it has loaded its modules: what it holds now is frozen (never
    traversed again by the collector) and the youngest generation is collected less often."""
    gc.collect()
    gc.freeze()
    young, middle, old = gc.get_threshold()
    gc.set_threshold(max(young, YOUNG_COLLECT_AFTER), middle, old)


@dataclass
class Runtime:
    settings: Settings
    redis: redis.Redis
    namespace: str = "leadscore"
    # Per-CRM overrides for the demo and tests (e.g. a sandbox's rate), merged into the mapping's limits.
    overrides: dict[str, Any] = field(default_factory=dict)
    _adapters: dict[str, CrmAdapter] = field(default_factory=dict, repr=False)
    _schedules: dict[str, SyncSchedule] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def mappings_dir(self) -> Path:
        return self.settings.mappings_dir

    @cached_property
    def model(self) -> ScoringModel:
        from connector.engine import load_scoring

        return load_scoring(self.mappings_dir / "scoring.yaml")

    @cached_property
    def model_store(self) -> ModelStore | None:
        """Trained probability models (LEADSCORE_MODEL_STORE); None when not configured."""
        if not self.settings.model_store:
            return None
        from connector.learn.store import ModelStore

        return ModelStore(self.settings.model_store, self.redis, self.namespace)

    @cached_property
    def predictors(self) -> ActiveModels | None:
        """The active probability model per CRM, loaded once per process (again when Redis names another)."""
        store = self.model_store
        if store is None:
            return None
        from connector.learn.store import ActiveModels

        return ActiveModels(store)

    @cached_property
    def runs(self) -> RunStore:
        return RunStore(self.redis, self.namespace)

    @cached_property
    def retries(self) -> RetrySet:
        return RetrySet(self.redis, self.namespace)

    @cached_property
    def metrics(self) -> Metrics:
        return Metrics(self.redis, self.namespace)

    @property
    def configured_crms(self) -> list[CrmName]:
        return self.settings.configured_crms

    def adapter(self, crm: CrmName) -> CrmAdapter:
        with self._lock:
            if crm not in self._adapters:
                self._adapters[crm] = self._build_adapter(crm)
            return self._adapters[crm]

    def _build_adapter(self, crm: CrmName) -> CrmAdapter:
        s = self.settings
        if crm == "hubspot":
            from connector.crm.hubspot import HubSpotAdapter
            from connector.mappings.hubspot import load_hubspot_mapping

            s.require_hubspot()
            assert s.hubspot_access_token is not None
            mapping = load_hubspot_mapping(self.mappings_dir / "hubspot.yaml")
            mapping = self._override(mapping, "hubspot")
            self._schedules[crm] = mapping.schedule
            return HubSpotAdapter(
                base_url=s.hubspot_base_url, token=s.hubspot_access_token, mapping=mapping, redis=self.redis,
                account=f"{self.namespace}:hubspot",
            )
        if crm == "salesforce":
            from connector.crm.salesforce import OAuthCredentials, SalesforceAdapter
            from connector.mappings.salesforce import load_salesforce_mapping

            s.require_salesforce()
            assert s.salesforce_instance_url is not None
            assert s.salesforce_access_token is not None
            oauth = None
            if s.salesforce_client_id and (s.salesforce_refresh_token or s.salesforce_client_secret):
                oauth = OAuthCredentials(
                    client_id=s.salesforce_client_id,
                    client_secret=s.salesforce_client_secret,
                    refresh_token=s.salesforce_refresh_token,
                )
            mapping_sf = load_salesforce_mapping(self.mappings_dir / "salesforce.yaml")
            mapping_sf = self._override(mapping_sf, "salesforce")
            self._schedules[crm] = mapping_sf.schedule
            return SalesforceAdapter(
                instance_url=s.salesforce_instance_url, token=s.salesforce_access_token, mapping=mapping_sf,
                redis=self.redis, ca_bundle=s.salesforce_ca_bundle, oauth=oauth,
                account=f"{self.namespace}:salesforce", learned=bool(s.model_store),
            )
        raise ConfigError(f"unknown CRM {crm!r}: use hubspot or salesforce.")

    @cached_property
    def echo_filter(self) -> EchoFilter | None:
        """Salesforce Outbound Messages that only echo our own writes (None: no readable salesforce.yaml)."""
        from connector.echo import EchoFilter
        from connector.mappings.salesforce import load_salesforce_mapping

        path = self.mappings_dir / "salesforce.yaml"
        if not path.is_file():
            return None
        try:
            mapping = load_salesforce_mapping(path)
        except UserError:
            return None  # `leadscore check` reports the file; meanwhile every delivery is rescored
        return EchoFilter.from_objects(self.redis, self.namespace, {str(k): v for k, v in mapping.objects.items()})

    def schedule(self, crm: CrmName) -> SyncSchedule:
        """When beat syncs this CRM: the `schedule:` section of its mapping file."""
        self.adapter(crm)
        return self._schedules[crm]

    def _override(self, mapping: Any, crm: str) -> Any:
        patch = self.overrides.get(crm)
        if not patch:
            return mapping
        return mapping.model_copy(update=patch(mapping) if callable(patch) else patch)

    @cached_property
    def router(self) -> Router:
        from connector.mappings.routing import AWAY_FILE, load_routing
        from connector.notify import Notifier
        from connector.routing.service import Router

        config = load_routing(self.mappings_dir / "routing.yaml")
        notifier = Notifier.from_settings(
            self.settings,
            self.redis,
            email=config.notifications.email,
            chat=config.notifications.chat,
        )
        return Router(
            config,
            self.redis,
            self.adapter,
            notifier,
            routing_clock(self.settings.routing_at),
            namespace=f"{self.namespace}:routing",
            away_file=self.mappings_dir / AWAY_FILE,
        )

    def close(self) -> None:
        with self._lock:
            for adapter in self._adapters.values():
                adapter.close()
            self._adapters.clear()


def routing_clock(at: float | None) -> Callable[[], float]:
    """The clock routing decides by: the real one, or a stated moment (LEADSCORE_ROUTING_AT) that stands still."""
    if at is None:
        return time.time
    return lambda: at


def build_runtime(
    settings: Settings,
    *,
    redis_client: redis.Redis | None = None,
    namespace: str = "leadscore",
    overrides: dict[str, Any] | None = None,
) -> Runtime:
    client = redis_client or redis.Redis.from_url(
        settings.redis_url, socket_timeout=30, socket_connect_timeout=5, health_check_interval=30
    )
    return Runtime(settings=settings, redis=client, namespace=namespace, overrides=overrides or {})
