"""The classifier the daemon uses: a trained prototypical network and a labelled support set.

Each defect crop gets the label of the nearest class prototype and a score (the softmax of minus
the scaled squared distances), or ``"unknown"`` when even the nearest prototype is farther than the
unknown distance: a defect unlike every support class is not forced into one. The distance is
calibrated on the training data (:func:`calibrate_unknown_distance`) and stored with the weights.
"""
from __future__ import annotations

import hashlib
import importlib.util
import io
import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from ..surfaces import SURFACES
from .contrast import WEIGHT as CONTRAST_WEIGHT
from .crops import CropSet, load_surface, normalise_crops, to_model_input
from .episodes import sample_episode
from .polarity import load_maps
from .proto import ProtoNet
from .site import WEIGHT as SITE_WEIGHT
from .transductive import STEPS as TRANSDUCTIVE_STEPS
from .transductive import TransductiveClassifier

log = logging.getLogger(__name__)

PACKAGE = Path(__file__).resolve().parents[1]  # stmwatch.models
WEIGHTS = PACKAGE / "weights" / "fewshot_proto_conv4.pt"
SUPPORT = PACKAGE / "support"
UNKNOWN = "unknown"


class PrototypicalClassifier:
    """Implements ``stmwatch.models.analyse.Classifier``.

    ``net`` is a trained :class:`ProtoNet`, ``support`` the labelled crops (one class per label),
    ``unknown_distance`` the squared embedding distance above which a crop is ``"unknown"``
    (``inf``: never).
    """

    name = "proto-conv4"

    def __init__(self, net: ProtoNet, support: CropSet, unknown_distance: float, version: str = "untracked",
                 crop_norm: str = "none", gate: tuple[ProtoNet, float] | None = None):
        self.net = net.eval()
        self.unknown_distance = float(unknown_distance)
        self.version = version
        self.crop_norm = crop_norm
        self.gate = (gate[0].eval(), float(gate[1])) if gate is not None else None
        self.set_support(support)

    def model_input(self, crops: np.ndarray) -> np.ndarray:
        """``crops`` as the network was trained on them: :func:`to_model_input`, and each crop
        normalised on its own when the weights say so (``TrainConfig.crop_norm``; the crops of a
        scan otherwise carry the whole scan's normalisation)."""
        x = to_model_input(crops)
        return normalise_crops(x) if self.crop_norm == "per_crop" else x

    def set_support(self, support: CropSet) -> None:
        """Compute the prototypes of ``support`` (once; every later crop is compared with them)."""
        self.support = support
        self.labels = support.labels
        x = np.concatenate([support.crops[k] for k in self.labels])
        y = np.concatenate([np.full(len(support.crops[k]), i) for i, k in enumerate(self.labels)])
        with torch.no_grad():
            self.net.fit(torch.from_numpy(self.model_input(x)), torch.from_numpy(y).long())
            if self.gate is not None:
                self.gate[0].fit(torch.from_numpy(to_model_input(x)), torch.from_numpy(y).long())

    @torch.no_grad()
    def distances(self, crops: np.ndarray, bias_v: float | None = None) -> np.ndarray:
        """Squared embedding distance ``(n, classes)`` of each crop to each prototype; one forward
        pass (``bias_v``: see :meth:`classify`)."""
        return self.net.distances(torch.from_numpy(self.model_input(crops))).numpy()

    def classify(self, crops: np.ndarray, bias_v: float | None = None) -> list[tuple[str, float]]:
        """``crops`` ``(n, C, h, w)`` → ``(label, score)`` each; score = the network's softmax
        probability of the nearest class (for ``"unknown"``: of the nearest class it was not given).
        ``bias_v`` is not used here: the prototypes of every click, fixed (the polarity choice and the
        refinement are :class:`~.transductive.TransductiveClassifier`'s)."""
        if len(crops) == 0:
            return []
        return self.label(crops, self.distances(crops))

    def label(self, crops: np.ndarray, d: np.ndarray, nearest: np.ndarray | None = None) -> list[tuple[str, float]]:
        """:meth:`classify` from the squared distances ``d`` ``(n, classes)`` of ``crops`` to the
        prototypes (computed here, or by a wrapper that moved the prototypes or added a cue):
        each crop gets the class of its smallest ``d``, or ``"unknown"`` when ``nearest`` ``(n,)``
        (default: that smallest ``d``), its squared embedding distance to the nearest prototype,
        passes the unknown distance (unlike every support class)."""
        p = torch.softmax(torch.from_numpy(-self.net.temperature * d), dim=1).numpy()
        best = d.argmin(axis=1)
        nearest = d[np.arange(len(d)), best] if nearest is None else nearest
        far = np.zeros(len(d), bool)
        if self.gate is not None:  # unlike every support crop to the gate's (scale-aware) embedding
            with torch.no_grad():
                far = self.gate[0].distances(torch.from_numpy(to_model_input(crops))).numpy().min(axis=1) > self.gate[1]
        out = []
        for i, k in enumerate(best):
            label = self.labels[k] if nearest[i] <= self.unknown_distance and not far[i] else UNKNOWN
            out.append((label, float(p[i, k])))
        return out


def onnx_embedder(backbone: torch.nn.Module, threads: int | None = None):
    """An embedding network exported to ONNX (batch dynamic) in an ONNX Runtime CPU session: a
    function ``(n, 2, 32, 32)`` float32 → ``(n, features)`` float32."""
    import onnxruntime as ort

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(backbone.eval(), torch.zeros(1, 2, 32, 32), buf, dynamo=False, opset_version=17,
                          input_names=["crops"], output_names=["features"], do_constant_folding=True,
                          dynamic_axes={"crops": {0: "batch"}, "features": {0: "batch"}})
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # no busy-waiting between runs
    session = ort.InferenceSession(buf.getvalue(), options, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"crops": np.ascontiguousarray(x, dtype=np.float32)})[0]


class OnnxBackbone(torch.nn.Module):
    """A trained embedding network run by ONNX Runtime (inference only), in the place of the torch
    one: the prototypical network's test-time augmentation, normalisation and distances stay as
    they are. ``bench classify`` measured 4.6-5.9x the crops per second of eager torch."""

    def __init__(self, backbone: torch.nn.Module, threads: int | None = None):
        super().__init__()
        self.embed = onnx_embedder(backbone, threads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.embed(x.detach().cpu().numpy()))


def classifier_backend(backend: str) -> str:
    """``"onnxruntime"`` or ``"torch"`` for ``[models] backend`` (the UNet's setting): ONNX Runtime
    for ``onnxruntime``, and for ``auto`` on a machine without CUDA where it is installed."""
    has_ort = importlib.util.find_spec("onnxruntime") is not None
    if backend == "onnxruntime" and not has_ort:
        raise ModuleNotFoundError("backend onnxruntime: onnxruntime is not installed (pip install 'stmwatch[onnx]')")
    if backend == "onnxruntime" or (backend == "auto" and has_ort and not torch.cuda.is_available()):
        return "onnxruntime"
    return "torch"


@torch.no_grad()
def calibrate_unknown_distance(net: ProtoNet, crop_sets: list[CropSet], percentile: float = 99.0,
                               episodes: int = 50, way: int = 4, query: int = 10, seed: int = 0) -> float:
    """The ``percentile`` of the squared distances of query crops to their *own* class prototype
    in 1-shot episodes of ``crop_sets`` (the training data). 1-shot prototypes are the noisiest, so
    the threshold errs towards naming a defect rather than calling it unknown."""
    rng = np.random.default_rng(seed)
    net.eval()
    inclass = []
    for s in crop_sets:
        w = min(way, len(s.crops))
        for _ in range(episodes):
            ep = sample_episode(s, w, 1, query, rng)
            net.fit(torch.from_numpy(ep.support), torch.from_numpy(ep.support_labels))
            d = net.distances(torch.from_numpy(ep.query)).numpy()
            inclass.append(d[np.arange(len(d)), ep.query_labels])
    return float(np.percentile(np.concatenate(inclass), percentile))


def file_version(path: Path) -> str:
    """The first 12 hex digits of the sha256 of ``path``."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]


def checked_polarity_maps(weights: Path, meta: dict, surface: str, net: ProtoNet) -> dict[int, np.ndarray]:
    """The polarity maps that ``weights``' ``meta`` names (:mod:`.polarity`) for ``surface``, checked:
    the file beside the weights, of the sha256 the meta records, fitted for ``net``'s embedding and
    test-time augmentation. Any of these wrong: none (the classifier works without them), and a
    warning that names the file and the problem."""
    path = weights.parent / meta["polarity_maps"]
    try:
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing")
        digest = file_version(path)
        if meta.get("polarity_maps_sha256") != digest:
            raise ValueError(f"{path}: sha256 {digest}, but {weights.name} names {meta.get('polarity_maps_sha256')}")
        return load_maps(path, surface, net.backbone, net.tta)
    except (OSError, ValueError, KeyError) as exc:
        log.warning("polarity maps not used (%s): clicks at the other polarity than a scan's are used as they are", exc)
        return {}


def load_classifier(surface: str, support_dir: Path | str | None = None, weights: Path | str | None = None,
                    unknown_distance: float | None = None, tta: str | None = None,
                    backend: str = "torch", polarity_maps: bool = True,
                    contrast_cue: bool = True) -> TransductiveClassifier:
    """The shipped (or given) prototypical network with the support set of ``surface``, its
    prototypes refined on the crops of each call (:class:`~.transductive.TransductiveClassifier`;
    an adapted network's ``meta["pool"]`` of lab crops too).

    ``support_dir`` is a folder ``<class>/*.npy`` (or ``<surface>/<class>/*.npy``); default the
    shipped ``models/support/<surface>``. ``weights`` default ``models/weights/fewshot_proto_conv4.pt``.
    ``unknown_distance`` (None or 0: the calibrated one stored with the weights). ``tta`` (None:
    the weights' ``meta["tta"]``, else ``"none"``): test-time augmentation of the embedding, see
    :class:`ProtoNet` (the stored unknown distance is calibrated with the stored setting).
    ``backend`` (``[models] backend``: auto | torch | onnxruntime | tensorrt) picks the embedding's
    runner, see :func:`classifier_backend`. The classes' lattice sites are learnt with the
    prototypes (:mod:`.site`) on a known surface, with the weights' ``meta["site_weight"]``
    (default :data:`.site.WEIGHT`; 0 turns it off), and their contrast (:mod:`.contrast`) with
    ``meta["contrast_weight"]`` (default :data:`.contrast.WEIGHT`; 0, or ``contrast_cue`` False
    (``[models] contrast_cue``), turns it off). The weights' ``meta["polarity_maps"]`` (a file
    beside them, :mod:`.polarity`) translate a class's clicks to a scan's other polarity; a missing
    file, one other than the weights name (its sha256) or one fitted for another embedding is not
    used (:func:`checked_polarity_maps`); ``polarity_maps`` False (``[models] polarity_maps``): none.
    """
    from .training import load  # avoid a cycle at import time

    weights = Path(weights) if weights else WEIGHTS
    net, config, meta = load(weights)
    if not isinstance(net, ProtoNet):
        raise ValueError(f"{weights} holds a {config.method} network, not a prototypical one")
    net.tta = tta or meta.get("tta", "none")
    maps = checked_polarity_maps(weights, meta, surface, net) if polarity_maps and meta.get("polarity_maps") else {}
    runner = classifier_backend(backend)
    if runner == "onnxruntime":
        net.backbone = OnnxBackbone(net.backbone)
    root = Path(support_dir) if support_dir else SUPPORT / surface
    if (root / surface).is_dir():
        root = root / surface
    support = load_surface(root)
    support.surface = surface
    threshold = unknown_distance or meta.get("unknown_distance", float("inf"))
    gate = None
    if meta.get("gate"):  # a second, scale-aware net that only says "unknown" (see docs/fewshot.md)
        gate_net, _, gate_meta = load(weights.parent / meta["gate"])
        gate = (gate_net, float(meta.get("gate_distance", gate_meta.get("unknown_distance", float("inf")))))
    log.info("classifier %s (%s): %d support classes for %s, unknown above %.3g", weights.name, runner,
             len(support.crops), surface, threshold)
    classifier = PrototypicalClassifier(net, support, threshold, version=file_version(weights),
                                        crop_norm=config.crop_norm, gate=gate)
    pool = weights.parent / meta["pool"] if meta.get("pool") else None
    if pool is not None and not pool.is_file():
        raise FileNotFoundError(f"{weights}: its pool of lab crops {pool.name} is missing")
    # prototypes refined on each scan's own defects, and on the lab's crops for an adapted classifier
    # and the classes' lattice sites learnt with them (models/fewshot/site.py)
    pool_bias = weights.parent / meta["pool_bias"] if pool is not None and meta.get("pool_bias") else None
    if pool_bias is not None and not pool_bias.is_file():
        raise FileNotFoundError(f"{weights}: its pool's biases {pool_bias.name} are missing")
    facts = SURFACES.get(surface)
    return TransductiveClassifier(classifier, np.load(pool) if pool is not None else None,
                                  steps=int(meta.get("refine_steps", TRANSDUCTIVE_STEPS)),
                                  row_period_px=facts.row_nm / facts.nm_per_px if facts else None,
                                  site_weight=float(meta.get("site_weight", SITE_WEIGHT)), polarity_maps=maps,
                                  pool_bias=np.load(pool_bias) if pool_bias is not None else None,
                                  contrast_weight=float(meta.get("contrast_weight", CONTRAST_WEIGHT)) if contrast_cue else 0.0)
