"""`VenomUnit`: the control loop inside the daemon, and its RPC methods.

    venom.status        READ   beat count, T_Λ, genome, last decision, PID state,
                               pid_stable, ledger_verified, counters
    venom.subscribe     READ   push each decision (notification venom.decision)
    venom.set_model     ADMIN  load an entropy model file (aal-core.entropy.v1)
    venom.release       ADMIN  lift a quarantine the loop imposed (or any, via the governor)

The loop's state is in memory; a restart starts a fresh genome and PID (the
ledger keeps the history).  A model set with venom.set_model is copied to
state_dir/venom-model.json and loaded again at start.
"""
from __future__ import annotations

import asyncio
import os

from ..config import VenomConfig
from ..errors import CONFLICT, INVALID_PARAMS, NOT_FOUND, ConfigError, RpcError, invalid_params
from ..log import get_logger
from ..rpc.registry import Access
from ..tasks import cancel_task
from ..units import Context, Unit
from .actions import maybe_await
from .engine import Settings, VenomLoop
from .entropy import ML_WEIGHT, EntropyParams, ModelError, load_model, write_model
from .genome import Action, Genome
from .pulse import PulseError

__all__ = ["VenomUnit", "settings_from_config", "MODEL_FILE", "MIN_PERIOD_S"]

log = get_logger("venom")

MODEL_FILE = "venom-model.json"
# A beat shorter than this would keep a small board's CPU awake for nothing.
MIN_PERIOD_S = 0.001


def settings_from_config(c: VenomConfig) -> Settings:
    """Settings for the loop; ConfigError names the venom.* key that is wrong."""
    try:
        genome = Genome.normalised(c.weight_r, c.weight_b, c.weight_e, c.weight_o)
    except ValueError as exc:
        raise ConfigError(f"venom.weight_*: {exc}") from None
    s = Settings(t1=c.t1, k_flows=c.k_flows, p_nodes=c.p_nodes, u=c.u, t_threshold=c.t_threshold,
                 genome=genome, summary_interval_s=c.summary_interval_s,
                 late_fraction=c.late_fraction, runner=c.runner,
                 evidence_window_s=c.evidence_window_s, critical_weight=c.critical_weight,
                 release_hold_s=c.release_hold_s)
    try:
        period = s.period
    except PulseError as exc:
        raise ConfigError(f"venom.k_flows/p_nodes/t1/u: {exc}") from None
    if period < MIN_PERIOD_S:
        raise ConfigError(f"venom: the beat T_Λ = {period:.3g} s (from venom.t1 = {c.t1}) is shorter "
                          f"than {MIN_PERIOD_S} s; the daemon would busy-loop. Raise venom.t1.")
    return s


class VenomUnit(Unit):
    name = "venom"

    def __init__(self, ctx: Context, *, sensing=None, governor=None, ledger=None):
        super().__init__(ctx)
        self.sensing, self.governor, self.ledger = sensing, governor, ledger
        c = ctx.config.venom
        self.enabled = c.enabled
        self.settings = settings_from_config(c)
        self.model_path = os.path.join(ctx.state_dir, MODEL_FILE)
        self.initial_model = self._initial_model(c)
        self.loop: VenomLoop | None = None
        self.task: asyncio.Task | None = None

    def _initial_model(self, c: VenomConfig) -> EntropyParams:
        path = c.model_file or (self.model_path if os.path.exists(self.model_path) else "")
        if not path:
            src = "config" if (c.ml_weight, c.ml_bias) != (ML_WEIGHT, 0.0) else "default"
            return EntropyParams(c.ml_weight, c.ml_bias, source=src)
        try:
            return load_model(path)
        except ModelError as exc:
            key = "venom.model_file" if c.model_file else f"the saved model ({MODEL_FILE})"
            raise ConfigError(f"{key}: {exc}") from None

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        if not self.enabled:
            log.info("disabled")
            return
        self.loop = VenomLoop(self.settings, self.ctx.clock, model=self.initial_model,
                              sensing=self.sensing, governor=self.governor, recorder=self.ledger,
                              publish=self._publish)
        self.task = asyncio.ensure_future(self.loop.run())
        log.info("started", t_lambda=round(self.loop.period, 6), runner=self.settings.runner,
                 model_weight=self.loop.model.weight, model_bias=self.loop.model.bias,
                 model_source=self.loop.model.source)

    async def stop(self) -> None:
        task, self.task = self.task, None
        await cancel_task(task)
        if self.loop is not None:
            entry = await self.loop.flush()
            self.loop.close()
            log.info("stopped", beats=self.loop.arbiter.beats,
                     summary_index=(entry or {}).get("ledger_index", "-"))

    def _publish(self, decision: dict) -> None:
        hub = self.ctx.hub
        if hub is not None and hub.subscribers("venom"):
            hub.publish("venom", decision)

    def metrics(self) -> list[dict]:
        running = {"name": "aal_core_venom_running", "type": "gauge", "help": "1 while the control loop runs.",
                   "samples": [{"labels": {}, "value": 1.0 if self.loop is not None and self.loop.running else 0.0}]}
        return [running] + (self.loop.metrics() if self.loop is not None else [])

    def summary(self) -> str:
        if self.loop is None:
            return "venom off" if not self.enabled else ""
        last = self.loop.last["action"] if self.loop.last else "-"
        return f"venom {self.loop.arbiter.beats} beats, last {last}"

    # ------------------------------------------------------------------ RPC
    def register(self, registry) -> None:
        registry.add("venom.status", self.rpc_status, result="VenomStatus")
        registry.add_topic("venom", data="VenomDecision", subscribe=self.rpc_subscribe,
                           params="VenomSubscribeParams", notify_method="venom.decision",
                           summary="Push each decision of the control loop (NOOP beats only on request).")
        registry.add("venom.set_model", self.rpc_set_model, params="VenomSetModelParams",
                     result="VenomSetModelResult", access=Access.ADMIN,
                     example={"path": "/nonexistent/entropy.json"}, example_error=INVALID_PARAMS)
        registry.add("venom.release", self.rpc_release, params="VenomReleaseParams",
                     result="VenomReleaseResult", access=Access.ADMIN,
                     example={"job_id": "no-such-job"}, example_error=NOT_FOUND)

    def rpc_status(self, p, call):
        """Beat count, T_Λ, genome, last decision and action, PID state, pid_stable, ledger_verified."""
        if self.loop is None:
            s = self.settings
            return {"enabled": self.enabled, "running": False, "beats": 0, "t_lambda": s.period,
                    "t1": s.t1, "k_flows": s.k_flows, "p_nodes": s.p_nodes, "u": s.u,
                    "t_threshold": s.t_threshold, "genome": s.genome.to_dict(),
                    "model": self.initial_model.to_dict(), "pid_stable": False,
                    "ledger_verified": bool(getattr(self.ledger, "verified", False)),
                    "runner": s.runner, "summary_interval_s": s.summary_interval_s,
                    "reason": "venom.enabled is false" if not self.enabled else "not started"}
        out = self.loop.status()
        out["enabled"] = self.enabled
        return out

    def rpc_subscribe(self, p, call):
        include_noop = p.get("include_noop", False)
        names = {a.value for a in Action}
        wanted = p.get("actions")
        if wanted:
            bad = [a for a in wanted if a not in names]
            if bad:
                raise invalid_params(f"unknown action(s) {', '.join(map(repr, bad))}",
                                     param="actions", expected=sorted(names))
            keep = frozenset(wanted)
        else:
            keep = frozenset(names if include_noop else names - {"NOOP"})
        return lambda d: d["action"] in keep

    async def rpc_set_model(self, p, call):
        """Load an entropy model file (aal-core.entropy.v1 JSON) and use it from the next beat."""
        path = p["path"]
        if not os.path.isabs(path):
            raise invalid_params(f"path must be absolute (the daemon's working directory is not yours): {path!r}",
                                 param="path")
        try:
            model = load_model(path)
        except ModelError as exc:
            raise invalid_params(str(exc), param="path", path=path) from None
        self._save_model(model)
        previous = self.loop.model if self.loop is not None else self.initial_model
        self.initial_model = model
        if self.loop is not None:
            self.loop.set_model(model)
        log.info("model_set", weight=model.weight, bias=model.bias, path=path, uid=call.uid)
        out = {"model": model.to_dict(), "previous": previous.to_dict()}
        rec = await self._record({"type": "venom.model", "model": model.to_dict(),
                                  "previous": previous.to_dict(), "uid": call.uid})
        if rec is not None:
            out["ledger_index"] = rec[0]
        return out

    def _save_model(self, model: EntropyParams) -> None:
        """Keep the model across restarts: write state_dir/venom-model.json atomically."""
        meta = {k: v for k, v in model.meta.items() if isinstance(k, str)}
        try:
            os.makedirs(os.path.dirname(self.model_path), exist_ok=True)
            write_model(self.model_path, model.weight, model.bias, **meta)
        except OSError as exc:
            raise RpcError(CONFLICT, f"cannot save the model in the state directory: {exc.strerror or exc}",
                           {"path": self.model_path}) from None
        except ModelError as exc:
            raise RpcError(CONFLICT, f"cannot save the model in the state directory: {exc}",
                           {"path": self.model_path}) from None

    async def rpc_release(self, p, call):
        """Lift a quarantine: admissions at the job's priority are allowed again."""
        job_id = p["job_id"]
        if self.governor is None:
            raise RpcError(CONFLICT, "this daemon has no governor; nothing is quarantined",
                           {"job_id": job_id})
        if self.loop is not None:
            await self.loop.actuator.release(job_id)
        else:
            await maybe_await(self.governor.release_quarantine(job_id))
        log.info("quarantine_released", job_id=job_id, uid=call.uid)
        out = {"job_id": job_id, "released": True}
        rec = await self._record({"type": "venom.release", "job_id": job_id, "uid": call.uid})
        if rec is not None:
            out["ledger_index"] = rec[0]
        return out

    async def _record(self, data: dict):
        if self.loop is not None:
            return await self.loop.record(data)
        return None
