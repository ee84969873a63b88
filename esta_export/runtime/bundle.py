"""Open a bundle, pick a stitch by budget, switch stitches at run time, run inference.

Engines: ONNX graphs with ONNX Runtime; OpenVINO IR (OpenVINO bundles) with OpenVINO
(``ov_engine.py``, chosen from the manifest's artifact format); for a TensorRT bundle, the engines built on the device by
``build_engines.py`` once they are built for this device and passed validation (``engine="auto"``;
:attr:`Bundle.engine_note` says plainly when a TensorRT bundle runs on ONNX Runtime instead).

Thread model: ``run`` reads the active stitch under a lock and calls the (thread-safe) ONNX
Runtime session outside it (a TensorRT engine serializes its calls), so inference in several threads and ``activate`` from another thread
never block each other for longer than a pointer swap. Loading a session happens outside the
active-pointer lock (one lock per stitch), so switching to an unloaded stitch does not stall runs.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from .errors import BundleError, IntegrityError, NoStitchFitsError
from .integrity import resolve_inside, sha256_file, verify_all
from .manifest import load_manifest
from .preprocess import preprocess as _preprocess
from .preprocess import softmax
from .session import SessionSettings, ort_session_options
from .weights import SharedWeights


def _release_free_memory() -> None:
    """Hand memory freed while building a session back to the OS (glibc keeps it otherwise)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl, macOS, Windows): nothing to do
        pass


@dataclass(frozen=True)
class Stitch:
    id: int
    route: str
    latency_ms: float | None  # the statistic select() uses (median by default)
    latency_source: str | None  # "measured" or "predicted"
    accuracy: float | None
    accuracy_source: str | None
    flops: int | None
    params: int | None
    info: dict = field(repr=False, compare=False, default_factory=dict)


class Bundle:
    """A deployed stitch family. Open with :meth:`Bundle.open`."""

    def __init__(self, root: Path, manifest: dict, *, share_weights: bool, providers, threads,
                 latency_stat: str, memory_arena: bool | None = None, verified: bool = False,
                 spinning: bool | None = None) -> None:
        self.root = root
        self.manifest = manifest
        self.input_spec: dict = manifest["input"]
        self.labels: list[str] | None = self.input_spec.get("labels")
        self.share_weights = share_weights
        # ORT's CPU arena keeps each session's peak activations reserved; with several sessions
        # loaded that reserve dominates, so it is off when memory is the point (sharing weights).
        self.memory_arena = (not share_weights) if memory_arena is None else memory_arena
        self.providers = list(providers or ["CPUExecutionProvider"])
        # The session configuration the manifest's latencies were measured with (profile --tune's
        # choice or the target's), unless the caller overrides a part of it.
        self.session_settings = SessionSettings.from_dict(
            manifest.get("session"), share_weights=share_weights, memory_arena=self.memory_arena,
            threads=threads, intra_op_spinning=spinning)
        self.threads = self.session_settings.threads
        self.latency_stat = latency_stat
        self._entries = {int(s["id"]): s for s in manifest["stitches"]}
        self._sessions: dict[int, object] = {}
        self._load_locks = {sid: threading.Lock() for sid in self._entries}
        self._active_lock = threading.Lock()
        self._active: tuple[int, object] | None = None
        self._weights: SharedWeights | None = None
        from .cpu import cpu_features

        self.cpu = cpu_features()  # what int8 stitches are checked against (ESTA_CPU_FLAGS overrides)
        self.int8_checks: dict[int, dict] = {}  # re-validations done on this CPU, by stitch id
        self._checked_files: set = set()  # shared files hashed (OpenVINO weights)
        self._files_verified = verified  # every file was hashed at open
        w = manifest.get("weights")
        if share_weights and w and w.get("index"):
            import json

            from .manifest import read_json_file

            index = read_json_file(resolve_inside(root, w["index"]), "weights index")
            self._weights = SharedWeights(index, resolve_inside(root, w["file"]), check_tensors=not verified)

    # -- opening ---------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, *, verify: bool = True, load: str = "lazy",
             share_weights: bool | None = None, providers: Iterable[str] | None = None,
             threads: int | None = None, latency_stat: str = "median",
             memory_arena: bool | None = None, engine: str = "auto",
             spinning: bool | None = None) -> "Bundle":
        """Open the bundle at ``path``.

        verify: hash every file against the manifest first (a flipped byte raises IntegrityError
        naming the file). Without it, each stitch graph is still re-hashed when it loads and each
        shared weight tensor when it is first read.
        load: "lazy" (sessions on first use) or "all" (every stitch now).
        share_weights: one copy of each unique tensor for all sessions (ONNX Runtime's weight
        prepacking is turned off then: it would copy every weight per session again). Default:
        the configuration the manifest's latencies were measured in (``manifest["session"]``).
        memory_arena: ONNX Runtime's CPU memory arena (default: off when sharing weights).
        threads, spinning: ONNX Runtime intra-op threads and thread spinning (default: the
        manifest's ``session``, which the profiler measured with; see runtime/session.py).
        engine: "onnxruntime", "openvino" (an OpenVINO bundle's IRs; "auto" picks it for them),
        "tensorrt" (the bundle's engines, built and validated on this
        device by build_engines.py; refused with one line otherwise), or "auto": TensorRT for a
        TensorRT bundle whose engines are all ready, else ONNX Runtime (``engine_note`` says why).
        The TensorRT path is NOT verified on hardware.
        """
        root = Path(path)
        if not root.is_dir():
            raise BundleError(f"bundle folder {root} not found", hint="pass the folder 'esta-export bundle' wrote")
        manifest = load_manifest(root)
        if verify:
            verify_all(root, manifest)
        if load not in ("lazy", "all"):
            raise BundleError(f"load={load!r} is not 'lazy' or 'all'")
        if share_weights is None:
            share_weights = bool((manifest.get("session") or {}).get("share_weights", True))
        b = cls(root, manifest, share_weights=share_weights, providers=providers, threads=threads,
                latency_stat=latency_stat, memory_arena=memory_arena, verified=verify,
                spinning=spinning)
        b._choose_engine(engine)
        if load == "all":
            for sid in b._entries:
                b.load(sid)
        return b

    def _choose_engine(self, engine: str) -> None:
        """The engine that runs the stitches (runtime/engines.py, the one table of engines)."""
        from .engines import choose

        self.engine, self.engine_note, self._engines = choose(self, engine)

    # -- stitches ----------------------------------------------------------------------------
    def _stitch(self, entry: dict) -> Stitch:
        lat = entry.get("latency") or {}
        value = lat.get(self.latency_stat)
        return Stitch(int(entry["id"]), entry.get("route", ""), None if value is None else float(value),
                      lat.get("source"), entry.get("accuracy"), entry.get("accuracy_source"),
                      entry.get("flops"), entry.get("params"), entry)

    def stitches(self) -> list[Stitch]:
        return [self._stitch(e) for e in self._entries.values()]

    def stitch(self, stitch_id: int) -> Stitch:
        return self._stitch(self._entry(stitch_id))

    def _entry(self, stitch_id: int) -> dict:
        try:
            return self._entries[int(stitch_id)]
        except (KeyError, ValueError):
            raise NoStitchFitsError(f"stitch {stitch_id} is not in this bundle",
                                    hint=f"choose one of {sorted(self._entries)}") from None

    def select(self, latency_budget_ms: float | None = None, min_accuracy: float | None = None) -> Stitch:
        """Most accurate stitch within the budget; with only min_accuracy, the fastest that meets it.

        Where accuracy is unknown, more FLOPs stand in for more accurate (and the choice says so
        in ``Stitch.accuracy_source`` being None).
        """
        cands = self.stitches()
        if latency_budget_ms is not None:
            timed = [s for s in cands if s.latency_ms is not None]
            if not timed:
                raise NoStitchFitsError("no stitch in this bundle has a recorded latency",
                                        hint="profile on the device (esta-export profile) and re-bundle")
            cands = [s for s in timed if s.latency_ms <= latency_budget_ms]
            if not cands:
                fastest = min(timed, key=lambda s: s.latency_ms)
                raise NoStitchFitsError(
                    f"no stitch runs within {latency_budget_ms:g} ms ({self.latency_stat}); the fastest, "
                    f"stitch {fastest.id}, takes {fastest.latency_ms:.3g} ms", hint="raise the budget")
        if min_accuracy is not None:
            known = [s for s in cands if s.accuracy is not None]
            if not known:
                raise NoStitchFitsError("no stitch in this bundle has a recorded accuracy",
                                        hint="select by latency budget only, or measure accuracy "
                                             "(esta-export select --val-data) and re-bundle")
            fits = [s for s in known if s.accuracy >= min_accuracy]
            if not fits:
                best = max((s.accuracy for s in known), default=None)
                raise NoStitchFitsError(
                    f"no stitch{' within the budget' if latency_budget_ms is not None else ''} reaches "
                    f"accuracy {min_accuracy:g} (best: {best})", hint="lower min_accuracy or raise the budget")
            if latency_budget_ms is None:
                timed = [s for s in fits if s.latency_ms is not None]
                if timed:
                    return min(timed, key=lambda s: (s.latency_ms, -(s.accuracy or 0)))
                return min(fits, key=lambda s: (s.flops or 0))
            cands = fits
        return max(cands, key=lambda s: (s.accuracy if s.accuracy is not None else -1.0, s.flops or 0,
                                          -(s.latency_ms or 0)))

    # -- sessions ----------------------------------------------------------------------------
    def load(self, stitch_id: int):
        """Create (once) and return the ONNX Runtime session of ``stitch_id``."""
        sid = int(self._entry(stitch_id)["id"])
        session = self._sessions.get(sid)
        if session is not None:
            return session
        with self._load_locks[sid]:
            if sid not in self._sessions:
                session = self._create_session(self._entries[sid])
                self._check_int8(self._entries[sid], session)
                self._sessions[sid] = session
                _release_free_memory()
        return self._sessions[sid]

    def _check_int8(self, entry: dict, session) -> None:
        """An int8 stitch on a CPU lacking what it was validated with: re-validated against the
        bundle's reference outputs, or refused (BundleError); the verdict is kept in int8_checks."""
        from .int8_check import check_int8, needs_check

        if not needs_check(self.manifest, entry, self.engine):
            return
        name = self.input_spec.get("name", "pixels")
        verdict = check_int8(self.root, self.manifest, entry,
                             lambda x: session.run(None, {name: x})[0], self.cpu)
        if verdict is not None:
            self.int8_checks[int(entry["id"])] = verdict

    def _create_session(self, entry: dict):
        from .engines import ENGINES

        return ENGINES[self.engine].open_session(self, entry)

    def _create_ort_session(self, entry: dict):
        """The stitch's ONNX graph in an ONNX Runtime session, its shared weights in place."""
        art = entry["artifact"]
        if art.get("format", "onnx") != "onnx":
            raise BundleError(f"stitch {entry['id']} is a {art['format']} artifact; this runtime runs "
                              "ONNX graphs with ONNX Runtime", hint="build the device engines first (see README)")
        path = resolve_inside(self.root, art["path"])
        # The validated graph's hash, checked at load time too: a swapped file never runs.
        if not path.is_file() or sha256_file(path) != art["sha256"]:
            raise IntegrityError(f"bundle file {art['path']} (stitch {entry['id']}) does not match the "
                                 "validated artifact's sha256", hint="re-copy the bundle")
        import onnxruntime as ort

        # The one session configuration (runtime/session.py) esta-export's profiler uses too.
        so = ort_session_options(ort, self.session_settings)
        values: dict = {}
        if self._weights is not None:
            values = self._weights.acquire(int(entry["id"]), ort)
            for name, value in values.items():
                so.add_initializer(name, value)
        try:
            session = ort.InferenceSession(str(path), so, providers=self.providers)
        except Exception as err:  # ORT raises its own exception types per version
            raise BundleError(f"ONNX Runtime cannot load {art['path']}: {str(err).splitlines()[0]}",
                              hint="check the onnxruntime version the README names") from None
        # The session reads these buffers in place: tie their lifetime to the session, so a thread
        # still running an unloaded stitch never sees its weights freed.
        session._esta_shared_initializers = (so, values)
        return session

    def unload(self, stitch_id: int) -> None:
        sid = int(stitch_id)
        with self._active_lock:
            if self._active is not None and self._active[0] == sid:
                raise BundleError(f"stitch {sid} is active", hint="activate another stitch first")
            self._sessions.pop(sid, None)
        if self._weights is not None:
            self._weights.release(sid)

    @property
    def loaded(self) -> list[int]:
        return sorted(self._sessions)

    # -- switching and running ---------------------------------------------------------------
    def activate(self, stitch_id: int) -> Stitch:
        """Make ``stitch_id`` the stitch ``run`` uses; safe to call from any thread at any time."""
        session = self.load(stitch_id)  # outside the lock: loading may take a while
        sid = int(stitch_id)
        with self._active_lock:
            self._active = (sid, session)
        return self.stitch(sid)

    @property
    def active(self) -> Stitch | None:
        current = self._active
        return None if current is None else self.stitch(current[0])

    def run(self, batch: np.ndarray, stitch_id: int | None = None) -> np.ndarray:
        """Logits for an NCHW float32 batch, with the active stitch (or ``stitch_id``)."""
        if stitch_id is not None:
            session = self.load(stitch_id)
        else:
            with self._active_lock:
                current = self._active
            if current is None:
                self.activate(self.select().id)
                with self._active_lock:
                    current = self._active
            session = current[1]
        x = self._check_batch(batch)
        name = self.input_spec.get("name", "pixels")
        try:
            # A copy: ONNX Runtime's output can pin the session's activation arena for as long
            # as the caller keeps the array (a stream of kept logits would grow without bound).
            return np.array(session.run(None, {name: x})[0], copy=True)
        except BundleError:
            raise
        except Exception as err:  # the runtime's own exception types differ per version
            raise BundleError(f"the runtime could not run this batch ({type(err).__name__}: "
                              f"{' '.join(str(err).split())[:200]})",
                              hint="pass an NCHW float32 batch of the bundle's input shape") from None

    def _check_batch(self, batch) -> np.ndarray:
        """An NCHW float32 batch of the bundle's input shape, or a BundleError saying what differs."""
        try:
            x = np.ascontiguousarray(batch, dtype=np.float32)
        except (TypeError, ValueError) as err:
            raise BundleError(f"the batch cannot be read as float32 numbers ({' '.join(str(err).split())[:120]})",
                              hint="pass a numeric numpy array (N, C, H, W)") from None
        if x.ndim == 3:
            x = x[None]
        want = self.expected_chw()
        if x.ndim != 4 or (want is not None and tuple(x.shape[1:]) != want) or x.shape[0] < 1:
            shape = "x".join(map(str, want)) if want else "C, H, W"
            raise BundleError(f"the batch has shape {list(x.shape)}, this bundle takes (N, {shape.replace('x', ', ')})",
                              hint="preprocess images with Bundle.preprocess (resize to the input size, NCHW)")
        return x

    def expected_chw(self) -> tuple[int, int, int] | None:
        spec = self.input_spec
        shape = spec.get("shape")
        if isinstance(shape, list) and len(shape) == 4 and all(isinstance(d, int) for d in shape[1:]):
            return tuple(shape[1:])  # type: ignore[return-value]
        size = spec.get("image_size")
        chans = len(spec.get("mean") or [0, 0, 0])
        if isinstance(size, int):
            return (chans, size, size)
        if isinstance(size, list) and len(size) == 2:
            return (chans, int(size[0]), int(size[1]))
        return None

    def engine_status(self, found: dict | None = None) -> dict[int, str]:
        """Bundles whose engines are built on the device: per stitch "ok" or the one line saying
        why its engine is not used here (the check the engine makes before running them); {} for
        bundles without such engines.

        ``found`` is this device's fingerprint (TensorRT: ``tensorrt.device.fingerprint``); read
        by default.
        """
        from .engines import ENGINES

        for eng in ENGINES.values():
            if eng.name != "onnxruntime" and eng.is_native(self):
                return eng.status(self, found)
        return {}

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        return _preprocess(image, self.input_spec)

    def classify(self, image: np.ndarray, top_k: int = 5) -> list[tuple[str, float]]:
        """Top-k (label, probability) for one raw HxWxC image."""
        probs = softmax(self.run(self.preprocess(image)))[0]
        order = np.argsort(-probs)[:top_k]
        labels = self.labels or [str(i) for i in range(probs.shape[0])]
        return [(labels[i], float(probs[i])) for i in order]

    def close(self) -> None:
        with self._active_lock:
            self._active = None
            self._sessions.clear()
        self._weights = None

    def __enter__(self) -> "Bundle":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
