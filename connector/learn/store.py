"""Where trained probability models live: files in a store every worker reads, Redis saying which is active.

    LEADSCORE_MODEL_STORE=/srv/leadscore/models     (or file:///srv/leadscore/models)

Layout: `<store>/<crm>/<version>.joblib`, written once (to a temporary name, then renamed) and
never changed. Redis (namespace `leadscore`):

    model:<crm>:active       the active version
    model:<crm>:versions     hash: version -> {"sha256", "file", "figures"} as JSON
    model:<crm>:trainings    list, newest first: each training's figures (kept or not), the last 200

Trust: a model file is a joblib pickle, and loading a pickle runs code. So a file is loaded only
when its SHA-256 equals the digest Redis recorded when a training of ours wrote it: a file that
was put into the store by anyone else, or changed after it was written, is refused with a
sentence. The store is thereby as trusted as the Redis the workers already trust with their
queue (which also carries work they execute); keep both writable only by the deployment.
Only folders are supported: an object store (s3://, gs://) would need its client, and is
refused with a sentence rather than half-supported.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import redis

from connector.errors import ConfigError, UserError
from connector.learn.train import Figures, TrainedModel

log = logging.getLogger("leadscore.learn")

KEEP_TRAININGS = 200
STORE_VARIABLE = "LEADSCORE_MODEL_STORE"


class StoreError(UserError):
    """The store cannot give a model it should (missing file, digest mismatch, unreadable)."""


def store_folder(location: str) -> Path:
    """LEADSCORE_MODEL_STORE as a folder; ConfigError for what is not one."""
    parsed = urlparse(location)
    if parsed.scheme in ("", "file") or (len(parsed.scheme) == 1 and location[1:3] in (":\\", ":/")):
        return Path(parsed.path if parsed.scheme == "file" else location).expanduser()
    raise ConfigError(
        f"{STORE_VARIABLE} must be a folder path or a file:// URL (a shared volume every worker mounts); "
        f"{parsed.scheme}:// is not supported."
    )


class ModelStore:
    def __init__(self, location: str, client: redis.Redis, namespace: str = "leadscore") -> None:
        self.folder = store_folder(location)
        self.redis = client
        self.ns = namespace

    def _key(self, crm: str, what: str) -> str:
        return f"{self.ns}:model:{crm}:{what}"

    # ------------------------------------------------------------------ writing

    def save(self, trained: TrainedModel) -> str:
        """Write the model under a new version; record its digest and figures. Returns the version."""
        import joblib

        buf = io.BytesIO()
        joblib.dump(trained, buf, compress=3)
        data = buf.getvalue()
        digest = hashlib.sha256(data).hexdigest()
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(trained.figures.trained_at))
        version = f"{trained.crm}-{stamp}-{digest[:8]}"
        folder = self.folder / trained.crm
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=".writing-", suffix=".joblib")
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            final = folder / f"{version}.joblib"
            os.replace(tmp, final)
        except OSError as exc:
            raise UserError(f"cannot write the model into {self.folder} ({exc.strerror or exc}); "
                            f"check {STORE_VARIABLE} and that this process may write there.") from None
        trained.version = version
        trained.figures.model_version = version
        record = {"sha256": digest, "file": final.name, "figures": trained.figures.as_json()}
        self.redis.hset(self._key(trained.crm, "versions"), version, json.dumps(record))
        return version

    def record_training(self, figures: Figures) -> None:
        key = self._key(figures.crm, "trainings")
        pipe = self.redis.pipeline()
        pipe.lpush(key, json.dumps(figures.as_json()))
        pipe.ltrim(key, 0, KEEP_TRAININGS - 1)
        pipe.execute()
        if figures.model_version:
            raw = self.redis.hget(self._key(figures.crm, "versions"), figures.model_version)
            if raw:
                record = json.loads(raw)
                record["figures"] = figures.as_json()
                self.redis.hset(self._key(figures.crm, "versions"), figures.model_version, json.dumps(record))

    def activate(self, crm: str, version: str) -> None:
        if not self.redis.hexists(self._key(crm, "versions"), version):
            raise UserError(f"{crm} has no stored model {version!r}.")
        self.redis.set(self._key(crm, "active"), version)

    # ------------------------------------------------------------------ reading

    def active_version(self, crm: str) -> str | None:
        raw = self.redis.get(self._key(crm, "active"))
        return raw.decode() if isinstance(raw, bytes) else raw

    def figures(self, crm: str, version: str) -> Figures | None:
        raw = self.redis.hget(self._key(crm, "versions"), version)
        return Figures.from_json(json.loads(raw)["figures"]) if raw else None

    def active_figures(self, crm: str) -> Figures | None:
        version = self.active_version(crm)
        return self.figures(crm, version) if version else None

    def trainings(self, crm: str, limit: int = 20) -> list[Figures]:
        return [Figures.from_json(json.loads(r)) for r in self.redis.lrange(self._key(crm, "trainings"), 0, limit - 1)]

    def load(self, crm: str, version: str) -> TrainedModel:
        """The stored model, after checking its file against the digest Redis recorded (see the module doc)."""
        import joblib

        raw = self.redis.hget(self._key(crm, "versions"), version)
        if raw is None:
            raise StoreError(f"{crm} model {version} is not recorded in Redis; it will not be loaded.")
        record: dict[str, Any] = json.loads(raw)
        path = self.folder / crm / str(record["file"])
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise StoreError(f"{crm} model {version} cannot be read from {path} ({exc.strerror or exc}); "
                             f"every worker needs {STORE_VARIABLE} pointing at the same store.") from None
        if hashlib.sha256(data).hexdigest() != record["sha256"]:
            raise StoreError(f"{crm} model file {path} does not match the digest recorded when it was trained; "
                             "it was changed or replaced, and will not be loaded.")
        trained = joblib.load(io.BytesIO(data))
        if not isinstance(trained, TrainedModel):
            raise StoreError(f"{path} does not hold a leadscore model.")
        trained.version = version
        return trained


class ActiveModels:
    """Per worker process: the active model of each CRM, loaded once and again only when Redis names another.

    `get(crm)` costs one Redis GET while the version is unchanged. A version that cannot be loaded
    is logged once and skipped (no probability is written) until the active version changes.
    """

    def __init__(self, store: ModelStore) -> None:
        self.store = store
        self._loaded: dict[str, Any] = {}
        self._failed: dict[str, str] = {}
        self._lock = threading.Lock()
        self.loads = 0

    def get(self, crm: str) -> Any:
        from connector.learn.predict import Predictor

        version = self.store.active_version(crm)
        if version is None:
            return None
        current = self._loaded.get(crm)
        if current is not None and current.version == version:
            return current
        if self._failed.get(crm) == version:
            return None
        with self._lock:
            current = self._loaded.get(crm)
            if current is not None and current.version == version:
                return current
            try:
                predictor = Predictor(self.store.load(crm, version))
            except StoreError as exc:
                self._failed[crm] = version
                log.error("model not loaded", extra={"event": "model_load_failed", "crm": crm, "why": str(exc)})
                return None
            self._loaded[crm] = predictor
            self.loads += 1
            log.info("model loaded", extra={"event": "model_loaded", "crm": crm, "version": version})
            return predictor
