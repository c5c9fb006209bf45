"""Open an exported bundle (docs/bundle-format.md): manifest checks, ONNX Runtime sessions, small arrays."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shlex
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .defaults import resolve as resolve_defaults
from .device import ORT_NAMES, DeviceOptions, provider_entries, provider_report, session_device

BUNDLE_FORMAT = "acestep-edge-bundle"
BUNDLE_VERSION = 1
PROVIDERS = ("cpu", "cuda", "tensorrt")
# The graphs a text2music render runs; editing tasks add vae_encoder and the audio tokenizers.
TEXT2MUSIC_GRAPHS = ("text_encoder", "condition_encoder", "dit", "vae_decoder")
_DEMO_GENERATOR = "acestep_edge.export.demo_bundle"
# A progress listener: (stage, done, total), stage a graph name ("dit", "vae_decoder", ...) or "write".
Stages = Callable[[str, int, int], None]


class BundleError(RuntimeError):
    """The bundle is missing, damaged or from another format version; the message says how to fix it.

    `code` names the failure in Runware's error shape (bundleNotFound, notABundle, bundleVersion,
    bundleFileMissing, bundleGraphMissing, bundleGraphUnreadable, bundleInconsistent).
    """

    def __init__(self, message: str, code: str = "bundleInvalid"):
        super().__init__(message)
        self.code = code


def fix_hint(bundle: Path, manifest: dict | None = None) -> str:
    """A command that rebuilds the bundle in the folder the user named (not where it was first written)."""
    export = (manifest or {}).get("export") or {}
    command = export.get("command")
    if command and _DEMO_GENERATOR in command:  # a copy of the demo bundle: rebuild it where it is now
        return f"rebuild it: `python -m {_DEMO_GENERATOR} --out {shlex.quote(str(bundle))}` ([export] extra)"
    try:
        words = shlex.split(command) if command else []
    except ValueError:
        words = []
    if "--out" in words[:-1]:  # the original command, retargeted at this folder
        words[words.index("--out") + 1] = str(bundle)
        return f"re-export it: `{shlex.join(words)}`"
    return f"re-export it: `acestep-edge export --checkpoint CHECKPOINT_DIR --out {shlex.quote(str(bundle))}`"


def read_manifest(path: str | Path) -> dict:
    """The manifest of bundle `path`, after the format and version checks (shared with `inspect`)."""
    bundle = Path(path)
    manifest_path = bundle / "manifest.json"
    # Messages stay short (error objects carry at most 300 characters) and name the folder given.
    if bundle.is_file():
        raise BundleError(f"{bundle} is a file, not a bundle folder (the folder `acestep-edge export --out` "
                          "writes, with manifest.json and the .onnx graphs)", "notABundle")
    if not bundle.is_dir():
        where = "" if bundle.is_absolute() else f" in {Path.cwd()}"
        raise BundleError(f"no bundle folder {bundle}{where}; pass the folder `acestep-edge export --out` wrote, "
                          f"or make one: `acestep-edge export --checkpoint CKPT --out {shlex.quote(str(bundle))}`",
                          "bundleNotFound")
    if not manifest_path.is_file():
        raise BundleError(f"{manifest_path} is missing, so {bundle} is not a bundle; {fix_hint(bundle)}", "notABundle")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{manifest_path} is not readable JSON ({exc}); {fix_hint(bundle)}", "notABundle") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else None
        raise BundleError(f"{manifest_path}: format is {got!r}, expected {BUNDLE_FORMAT!r}; {fix_hint(bundle)}",
                          "notABundle")
    if manifest.get("format_version") != BUNDLE_VERSION:
        raise BundleError(
            f"{manifest_path}: format_version is {manifest.get('format_version')!r}, this version of "
            f"acestep-edge reads {BUNDLE_VERSION}; {fix_hint(bundle, manifest)}", "bundleVersion"
        )
    return manifest


@dataclass(frozen=True)
class SessionOptions:
    """How graphs are run. `provider_options` are passed to the ONNX Runtime provider as given."""

    provider: str = "cpu"
    threads: int | None = None  # intra-op threads; None = ONNX Runtime's default (all cores)
    provider_options: dict[str, Any] = field(default_factory=dict)
    device: DeviceOptions = field(default_factory=DeviceOptions)
    # int8 (DynamicQuantizeMatMul) weight form: s8, u8, stored, or None = chosen from the CPU's flags
    # (runtime/cpu_features.py; the ACESTEP_EDGE_INT8_WEIGHTS variable overrides it).
    int8_weights: str | None = None
    # VAE decode windows run at once on CPU (runtime/postprocess.py `tiled_decode`), each on threads // this
    # many threads; None = 2 on CPU with ≥ 2 threads and a small tile overlap (Bundle.vae_workers), else 1.
    # ONNX Runtime's Sin (the Snake activations) runs on one thread, so one window at a time leaves the
    # other cores idle a fifth of the decode.
    vae_workers: int | None = None

    @property
    def io_binding(self) -> bool:
        """Bind the DiT's inputs on the device (default on for cuda/tensorrt; CPU gains nothing from it)."""
        return self.device.io_binding if self.device.io_binding is not None else self.provider != "cpu"

    def __post_init__(self) -> None:
        if self.provider not in PROVIDERS:
            raise ValueError(f"provider must be one of {', '.join(PROVIDERS)} (got {self.provider!r})")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be ≥ 1 (got {self.threads})")
        if self.vae_workers is not None and (isinstance(self.vae_workers, bool) or not isinstance(self.vae_workers, int)
                                             or self.vae_workers < 1):
            raise ValueError(f"vae_workers must be an int ≥ 1 (got {self.vae_workers!r})")
        if self.int8_weights not in (None, "auto", "stored", "s8", "u8"):
            raise ValueError(f"int8_weights must be s8, u8, stored or auto (got {self.int8_weights!r})")


def provider_chain(options: SessionOptions, graph: str | None = None, bundle_dir: str | Path = ".",
                   encoder_dim: int | None = None) -> list:
    """The ordered provider list for `graph`: the asked one first, with fall-backs ONNX Runtime may use."""
    return provider_entries(options.provider, options.device, bundle_dir, graph, options.provider_options,
                            encoder_dim)


def session_options(ort, threads: int | None = None, graph: str | None = None):
    """The ONNX Runtime SessionOptions a bundle graph is created with."""
    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if graph in ("dit", "vae_decoder"):
        # Long sequences (two-layer XL-width DiT at 600 s, benchmarks/RESULTS.md "Activation memory at 10
        # minutes"): the memory pattern ORT plans after the first run gives every planned tensor a fixed
        # offset in one block (peak 3.9 GB → 6.4 GB on the second forward), and the default arena grows
        # by powers of two (4.4 GB). An arena that grows by what is asked stays at the first forward's peak.
        # The XL VAE decoder's 512-frame window: 5.3 GB → 3.4 GB peak, same speed.
        so.enable_mem_pattern = False
        if _exact_arena(ort):
            so.add_session_config_entry("session.use_env_allocators", "1")
    return so


_ARENA: list[bool] = []  # whether the process-wide CPU arena is registered (once per process)


def _exact_arena(ort) -> bool:
    """Register ONNX Runtime's process-wide CPU arena with extend strategy kSameAsRequested (once)."""
    if not _ARENA:
        info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
        try:  # OrtArenaCfg(max_mem 0 = no limit, arena_extend_strategy 1 = kSameAsRequested, defaults)
            ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, 1, -1, -1))
            _ARENA.append(True)
        except Exception:  # already registered by the embedding application, or unsupported: keep ORT's own
            _ARENA.append(False)
    return _ARENA[0]


class Bundle:
    """A validated bundle directory. Sessions are created on first use and then reused."""

    def __init__(self, path: str | Path, options: SessionOptions | None = None):
        self.path = Path(path)
        self.options = options or SessionOptions()
        self.manifest = read_manifest(self.path)
        self._sessions: dict[str, Any] = {}
        self._observer: Stages | None = None
        self.provider_warnings: list[str] = []  # one per graph that did not get the asked provider
        self.weight_forms: dict[str, dict] = {}  # graph → int8 weight form stored / used and why
        self.cuda_graph = self.options.device.cuda_graph and self.options.provider == "cuda"
        self._dit_graphs = None  # the DiT session's CUDA-graph registry (runtime/cuda_graphs.py), made once
        self._check_files()  # small files only: a graph's files are checked when it is first needed
        self.silence_latent = self._load_array("silence_latent")
        self.null_condition_emb = self._load_array("null_condition_emb")

    def _fix(self) -> str:
        return fix_hint(self.path, self.manifest)

    def _check_files(self) -> None:
        for name, entry in self.manifest.get("files", {}).items():
            if not (self.path / entry["file"]).exists():
                raise BundleError(f"{self.path / entry['file']} ({name}) is missing; {self._fix()}", "bundleFileMissing")

    def _missing_graph_file(self, name: str) -> Path | None:
        graph = self.manifest.get("graphs", {}).get(name, {})
        for key in ("file", "data"):
            if graph.get(key) and not (self.path / graph[key]).exists():
                return self.path / graph[key]
        return None

    def require(self, names) -> None:
        """Refuse before any render when a graph these names need is absent from the manifest or the folder."""
        for name in names:
            if name not in self.manifest.get("graphs", {}):
                raise BundleError(f"bundle {self.path} has no {name!r} graph; {self._fix()}", "bundleGraphMissing")
            missing = self._missing_graph_file(name)
            if missing is not None:
                raise BundleError(f"{missing} (graph {name!r}) is missing; {self._fix()}", "bundleGraphMissing")

    def _load_array(self, name: str) -> np.ndarray:
        entry = self.manifest.get("files", {}).get(name)
        if entry is None:
            raise BundleError(f"manifest of {self.path} lists no {name!r} file; {self._fix()}", "bundleFileMissing")
        return np.load(self.path / entry["file"]).astype(np.float32)

    @property
    def config(self) -> dict:
        return self.manifest["model"]["dit"]

    @property
    def audio(self) -> dict:
        return self.manifest["audio"]

    @property
    def sampler_defaults(self) -> dict:
        return self.manifest.get("sampler_defaults", {})

    @property
    def tokenizer_path(self) -> Path:
        return self.path / self.manifest["files"]["tokenizer"]["file"]

    def has_graph(self, name: str) -> bool:
        """Listed in the manifest and its files present (a copied bundle may lack a graph it lists)."""
        return name in self.manifest.get("graphs", {}) and self._missing_graph_file(name) is None

    # -- sessions -------------------------------------------------------------------------
    def _threads(self) -> int:
        """The intra-op threads sessions get (ONNX Runtime's default when unset: one per usable core)."""
        if self.options.threads:
            return self.options.threads
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)

    @property
    def vae_workers(self) -> int:
        """VAE decode windows decoded at once (SessionOptions.vae_workers; auto: 2 on CPU with ≥ 2 threads when
        the bundle's tile overlap is at most 1/16 of its window).

        Two windows of chunk/2 frames carry their context twice as often: with the exact 16-frame overlap
        that is 1.125× the frames (one 512-frame window: 1.07×), which the second core repays; with the
        official 64 it is 1.5× against 1.33×, which eats the gain, and clips of ≤ 4 overlaps cannot be
        split at all (one window on half the threads), so such bundles decode one window at a time."""
        if self.options.vae_workers is not None:
            return self.options.vae_workers
        tiling = resolve_defaults(self.manifest.get("sampler_defaults"))
        small_context = 16 * tiling.vae_overlap <= tiling.vae_chunk
        return 2 if self.options.provider == "cpu" and self._threads() >= 2 and small_context else 1

    def session(self, name: str):
        """The ONNX Runtime session of a graph (created once), checked against the manifest's IO."""
        if name in self._sessions:
            return self._sessions[name]
        import onnxruntime as ort

        self.require([name])
        graph = self.manifest["graphs"][name]
        threads = self.options.threads
        if name == "vae_decoder" and self.vae_workers > 1:  # the windows in flight share the cores
            threads = max(1, self._threads() // self.vae_workers)
        so = session_options(ort, threads, name)
        try:
            session = self._create(ort, name, graph, so)
        except Exception as exc:  # ORT raises its own exception types for corrupt or truncated files
            raise BundleError(f"ONNX Runtime could not load {self.path / graph['file']}: {exc}; {self._fix()}",
                              "bundleGraphUnreadable") from exc
        self._check_io(name, graph, session)
        self._report_provider(name, graph, session)
        self._sessions[name] = session
        return session

    def _report_provider(self, name: str, graph: dict, session) -> None:
        notes = []
        report = provider_report(self.options.provider, name, list(session.get_providers()))
        if report:
            notes.append(report)
        if self.options.provider == "tensorrt" and graph.get("ops", "standard") != "plain":
            notes.append(f"graph {name!r} was exported with --ops {graph.get('ops', 'standard')}; TensorRT takes "
                         "only the subgraphs it can parse and leaves the rest to CUDA: export with --ops plain")
        for note in notes:
            self.provider_warnings.append(note)
            warnings.warn(note, RuntimeWarning, stacklevel=3)

    def _create(self, ort, name: str, graph: dict, so):
        """The session, with DynamicQuantizeMatMul weights rewritten to this CPU's fast form (staged
        beside the bundle while ONNX Runtime loads them, removed once the session exists)."""
        path = self.path / graph["file"]
        if "DynamicQuantizeMatMul" not in ((graph.get("quantization") or {}).get("op") or ""):
            return self._create_from(ort, name, str(path), so)
        from .cpu_features import int8_weight_form
        from .int8_form import stored_form, staged_model

        stored, _ = stored_form(path.read_bytes())
        if stored is None:
            return self._create_from(ort, name, str(path), so)
        target, why = int8_weight_form(stored, override=self.options.int8_weights)
        staged, rewrite, cleanup = staged_model(path, target)
        try:
            session = self._create_from(ort, name, str(staged), so)
        finally:
            cleanup()
        self.weight_forms[name] = {"stored": stored, "used": target, "ops": rewrite.ops, "why": why}
        return session

    def _create_from(self, ort, name: str, path: str, so):
        enc_dim = self.config.get("encoder_hidden_size") if name == "dit" else None
        with warnings.catch_warnings():  # ORT's own "not in available providers" warning: reported later
            warnings.simplefilter("ignore", UserWarning)
            try:
                return ort.InferenceSession(path, sess_options=so,
                                            providers=provider_chain(self.options, name, self.path, enc_dim))
            except Exception as exc:
                if not (name == "dit" and self.options.provider == "cuda" and self.options.device.cuda_graph):
                    raise
                # ORT refuses CUDA graphs when any node is placed off the GPU: run without them, say so.
                self.cuda_graph = False
                note = f"graph 'dit': CUDA graphs are not possible here ({exc}); running without them"
                self.provider_warnings.append(note)
                warnings.warn(note, RuntimeWarning, stacklevel=5)
                plain = dataclasses.replace(self.options, device=dataclasses.replace(self.options.device,
                                                                                     cuda_graph=False))
                return ort.InferenceSession(path, sess_options=so,
                                            providers=provider_chain(plain, name, self.path, enc_dim))

    def _check_io(self, name: str, graph: dict, session) -> None:
        want = [i["name"] for i in graph.get("inputs", [])]
        got = [i.name for i in session.get_inputs()]
        if sorted(want) != sorted(got):
            raise BundleError(
                f"graph {name!r} takes inputs {got} but the manifest says {want}; the bundle is inconsistent: "
                f"{self._fix()}", "bundleInconsistent"
            )

    def providers_in_use(self) -> dict[str, list[str]]:
        """Providers each created session actually got (ONNX Runtime silently falls back to CPU)."""
        return {name: list(s.get_providers()) for name, s in self._sessions.items()}

    def dit_runner(self, constants: dict, shared: dict | None = None):
        """A DitRunner for one render's constant DiT inputs (`shared`: feeds common to every set, the
        adapter factors), bound on the device when IO binding is on."""
        from .dit_runner import DitRunner

        session = self.session("dit")
        return DitRunner(session, constants, io_binding=self.options.io_binding,
                         device_id=self.options.device.device_id, shared=shared, graphs=self.dit_graphs())

    def dit_graphs(self):
        """The DiT session's CUDA-graph registry, shared by every render (None without CUDA graphs).

        CUDA graphs need every buffer on the GPU: a session that fell back to the CPU runs plainly bound.
        """
        session = self.session("dit")
        if self._dit_graphs is None and self.cuda_graph and self.options.io_binding \
                and session_device(list(session.get_providers())) == "cuda":
            from .cuda_graphs import CudaGraphs

            self._dit_graphs = CudaGraphs(session, "cuda", self.options.device.device_id)
        return self._dit_graphs

    def precisions_in_use(self) -> dict[str, str]:
        """Each created session's graph precision from the manifest (bundles before precisions: fp32)."""
        graphs = self.manifest.get("graphs", {})
        return {name: graphs.get(name, {}).get("precision", "fp32") for name in self._sessions}

    def weight_forms_in_use(self) -> dict[str, str]:
        """Each int8 session's weight form, e.g. {"dit": "s8 (stored u8; avx512_vnni: ...)"}."""
        return {name: f"{f['used']} (stored {f['stored']}; {f['why']})" for name, f in self.weight_forms.items()
                if name in self._sessions}

    def run(self, name: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        observer = self._observer
        if observer is not None:
            observer(name, 0, 1)
        out = self.session(name).run(None, feeds)
        if observer is not None:
            observer(name, 1, 1)
        return out

    @contextlib.contextmanager
    def observing(self, stages: Stages | None):
        """Report each graph run to `stages` for the duration (the encoders of one request's conditioning)."""
        previous, self._observer = self._observer, stages
        try:
            yield
        finally:
            self._observer = previous

    def preferred_provider_active(self) -> bool:
        want = ORT_NAMES[self.options.provider]
        return all(s.get_providers()[0] == want for s in self._sessions.values())
