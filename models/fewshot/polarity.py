"""A click's look at the other bias polarity: linear maps between the embeddings of the two.

Many defects look different in filled states (negative sample bias) and in empty states
(positive): on Si(001):H an incorporated As is bright in one and dark in the other. One click
shows its class at one polarity only, and the embedding puts the two looks of a class apart, so
a click made in a filled-state scan names the class badly in an empty-state one
(docs/adapt.md, "Clicks at each bias polarity").

The simulator can image the *same* sample at both polarities. Its paired crops teach, per
surface, where a defect's embedding goes when the polarity flips: a ridge-regression linear map
(with an offset) from the embeddings at one sign to those at the other, one per direction
(:func:`fit_map`). When a scan is labelled at a polarity where a class has no click,
:class:`~.transductive.TransductiveClassifier` uses that class's clicks translated by the map
(:func:`translate`) instead of the clicks as they are. The maps belong to one embedding network:
they are stored with the fingerprint of its weights (:func:`embedding_fingerprint`) and its
test-time augmentation, and refused for any other (a re-trained or fine-tuned embedding): the
classifier then works without them, as before they existed, and says so in the log.

Fitted by ``scripts/fit_polarity_maps.py`` (training-style scans only); chosen and measured in
docs/adapt.md ("Stop 29").
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

RIDGE = 10.0  # the ridge penalty of every map (chosen on the fitting pairs alone: docs/adapt.md)


def embedding_fingerprint(net: torch.nn.Module) -> str:
    """The first 12 hex digits of the sha256 over every tensor of ``net``'s state (names and
    values, in order): which embedding a set of maps was fitted for."""
    digest = hashlib.sha256()
    for name, value in net.state_dict().items():
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


def fit_map(source: np.ndarray, target: np.ndarray, ridge: float = RIDGE) -> np.ndarray:
    """The ridge-regression map ``(d + 1, d)`` from embeddings ``source`` ``(n, d)`` to the same
    samples' embeddings ``target`` ``(n, d)`` at the other polarity; its last row is the offset."""
    a = np.hstack([np.asarray(source, np.float64), np.ones((len(source), 1))])
    return np.linalg.solve(a.T @ a + ridge * np.eye(a.shape[1]), a.T @ np.asarray(target, np.float64)).astype(np.float32)


def translate(weights: np.ndarray, embedded: torch.Tensor, unit: bool = True) -> torch.Tensor:
    """``embedded`` ``(n, d)`` moved by a map of :func:`fit_map`; unit length (``unit``, the cosine
    metric's embeddings) as the network's own."""
    w = torch.from_numpy(np.asarray(weights, np.float32))
    out = embedded @ w[:-1] + w[-1]
    return torch.nn.functional.normalize(out, dim=1) if unit else out


def map_key(surface: str, to_sign: int) -> str:
    """The name of ``surface``'s map towards polarity ``to_sign`` (+1 empty, -1 filled states), as
    stored in the maps file."""
    return f"{surface}__to_{'empty' if to_sign > 0 else 'filled'}"


def save_maps(path: Path | str, maps: dict[str, np.ndarray], fingerprint: str, tta: str) -> Path:
    """Write ``maps`` (:func:`map_key` → :func:`fit_map` array), the fingerprint of the embedding
    network they were fitted for and its test-time augmentation (``ProtoNet.tta``)."""
    path = Path(path)
    np.savez(path, fingerprint=np.array(fingerprint), tta=np.array(tta), **maps)
    return path


def load_maps(path: Path | str, surface: str, backbone: torch.nn.Module, tta: str) -> dict[int, np.ndarray]:
    """``surface``'s maps in ``path`` as ``{to_sign: array}`` (empty when the file has none for
    it). ``ValueError`` when they were fitted for another embedding than ``backbone`` with ``tta``."""
    with np.load(Path(path)) as data:
        fitted_for, fitted_tta = str(data["fingerprint"]), str(data["tta"]) if "tta" in data.files else "?"
        found = {sign: data[map_key(surface, sign)] for sign in (-1, 1) if map_key(surface, sign) in data.files}
    if found and (fitted_for, fitted_tta) != (embedding_fingerprint(backbone), tta):
        raise ValueError(f"{path}: polarity maps fitted for embedding {fitted_for} with test-time "
                         f"augmentation {fitted_tta!r}, not this one ({embedding_fingerprint(backbone)}, {tta!r})")
    return found
