"""Transductive prototype refinement: prototypes that move towards the defects being labelled.

A one-shot prototype is a single crop's embedding; on another microscope, or with an atypical
click, it sits off the centre of its class. Each call to :meth:`TransductiveClassifier.classify`
therefore first refines the prototypes on the unlabelled crops at hand: the crops of that call
(one scan's defects) and, for an adapted classifier (``stmwatch adapt`` stores them in the
bundle), a pool of the lab's own defect crops. A refinement step assigns every unlabelled crop
softly to the prototypes (the network's own softmax of minus the scaled squared distances) and
moves each prototype to the weighted mean of its support crops and the crops it attracts (the
soft k-means of Ren et al. 2018, "Meta-learning for semi-supervised few-shot classification").
The support crops keep their labels, nothing is trained, and every call starts again from the
support set's own prototypes, so one scan's labels never depend on the scans before it.

One step, on the scan's crops and the pool, was chosen on training-style scans
(docs/adapt.md, "Transduction on the scan's own defects").

**Polarity.** Many defects look different in filled states (negative sample bias) and empty
states (positive). When the call says the scan's bias and the classifier has the surface's
polarity map towards it (:mod:`.polarity`: where the same defect's embedding goes when the
polarity flips), a class's clicks at the other polarity are translated by it and join its clicks
at the scan's polarity and of unknown bias (chosen on training-style scans: docs/adapt.md, stop 29);
so do the crops of an adapted classifier's pool taken from scans at the other polarity, where the
bundle records each crop's bias.
Without a map, a class's prototype is made from its clicks at the scan's polarity (and those of
unknown bias), and a class with no click there keeps all its clicks as they are. A scan of
unknown bias, or a support set without bias records, uses every click as it is. The pool
is used whole: cutting it to the scan's polarity was lower on training-style scans (docs/adapt.md,
"Clicks at each polarity").

**Lattice site.** Given the surface's row period, each class also learns where on the rows its
defects sit (:mod:`.site`): a Gaussian on the cosine of the crop's row phase, fitted on the clicks
and the soft assignments of the unlabelled crops, whose negative log-likelihood joins the network's
logits in the refinement and in the final distances. With ``steps`` = 0 (no refinement) it is
fitted on the clicks alone.

**Contrast.** With ``contrast_weight`` > 0 each class also learns how bright or dark its defects
are against the lattice round them, in the scan's normalised units (:mod:`.contrast`), the same
way; its Gaussian is fitted on the crops at the scan's polarity only (clicks there or of unknown
bias, the scan's defects, the pool's crops there), since some classes swap contrast with the bias.
"""
from __future__ import annotations

import numpy as np
import torch

from .contrast import FLOOR as CONTRAST_FLOOR
from .contrast import core_contrast
from .crops import CropSet, bias_polarity, to_model_input
from .polarity import translate
from .site import WEIGHT as SITE_WEIGHT
from .site import ClassGaussian, row_phase_cos

STEPS = 1  # soft k-means steps per call (docs/adapt.md)


class TransductiveClassifier:
    """Wraps a :class:`~.classifier.PrototypicalClassifier` ``base``: each :meth:`classify` (and
    :meth:`distances`) refines the support set's prototypes over ``steps`` soft k-means steps on
    that call's crops together with ``pool`` ``(n, C, H, W)`` (the lab's crops, or None);
    everything else is the base classifier's. ``row_period_px`` (the surface's row period in crop
    pixels; None: no site cue) and ``site_weight`` (0: none) set the lattice-site cue.
    ``polarity_maps`` ``{to_sign: map}`` (:mod:`.polarity`; None: none) translate the clicks at the
    other polarity than a scan's to its polarity, and the pool's crops with ``pool_bias`` ``(n,)``
    (V, each pool crop's scan; NaN unknown) at it (see "Polarity" above). ``contrast_weight`` (0:
    none) sets the contrast cue (see "Contrast" above)."""

    def __init__(self, base, pool: np.ndarray | None = None, steps: int = STEPS,
                 row_period_px: float | None = None, site_weight: float = SITE_WEIGHT,
                 polarity_maps: dict[int, np.ndarray] | None = None, pool_bias: np.ndarray | None = None,
                 contrast_weight: float = 0.0):
        self.base = base
        self.pool = None if pool is None or len(pool) == 0 else np.asarray(pool, dtype=np.float32)
        self.steps = int(steps)
        self.row_period_px = row_period_px if row_period_px and site_weight > 0 else None
        self.contrast_weight = max(0.0, float(contrast_weight))
        self.name = (f"{base.name}-transductive" + ("-site" if self.row_period_px else "")
                     + ("-contrast" if self.contrast_weight else ""))
        self.site_weight = float(site_weight)
        self.polarity_maps = dict(polarity_maps or {})
        self._pool_embedding, self._pool_site, self._pool_contrast = (
            self._features(self.pool) if self.pool is not None else (None, None, None))
        self._pool_polarity = None  # the polarity of each pool crop's scan, where known for every crop
        if self.pool is not None and pool_bias is not None and len(pool_bias) == len(self.pool):
            self._pool_polarity = np.array([bias_polarity(float(b)) for b in pool_bias], np.int8)
        self._fit_support()

    def __getattr__(self, name):  # labels, net, version, unknown_distance, support ...
        return getattr(self.__dict__["base"], name)

    @torch.no_grad()
    def _features(self, crops: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """The crops' embeddings and the cosines of their row phases (:func:`.site.row_phase_cos`;
        None without the site cue), both from the crops as the network sees them, and their
        contrast (:func:`.contrast.core_contrast`, in the scan's units; None without the cue)."""
        scan_units = to_model_input(crops)  # resized once; model_input of it only normalises, where the weights ask
        net, x = self.base.net, self.base.model_input(scan_units)
        embedded = torch.cat([net.embed(torch.from_numpy(x[i:i + 512])) for i in range(0, len(x), 512)])
        site = None if self.row_period_px is None else torch.from_numpy(row_phase_cos(x, self.row_period_px))
        contrast = None if not self.contrast_weight else torch.from_numpy(core_contrast(scan_units))
        return embedded, site, contrast

    def _fit_support(self) -> None:
        support, labels = self.base.support, self.base.labels
        x = np.concatenate([support.crops[k] for k in labels])
        y = np.concatenate([np.full(len(support.crops[k]), i) for i, k in enumerate(labels)])
        self._support_embedding, self._support_site, self._support_contrast = self._features(x)
        self._one_hot = torch.nn.functional.one_hot(torch.from_numpy(y).long(), len(labels)).float()
        self._support_prototypes = self.base.net.prototypes
        self._support_polarity = np.concatenate([support.polarity(k) for k in labels])

    def _start(self, bias_v: float | None) -> tuple:
        """Support embeddings, their one-hot labels, the prototypes, the support crops' row-phase
        cosines and contrasts (None without the cue) to use for a scan of sample bias ``bias_v`` (V;
        None: unknown), and which of them are at its polarity or of unknown bias ``(s,)`` float (1
        or 0; all 1 for a scan of unknown bias): see "Polarity" above."""
        sign = bias_polarity(bias_v)
        same = torch.from_numpy(((self._support_polarity == 0) | (self._support_polarity == sign) | (sign == 0))
                                .astype(np.float32))
        everything = (self._support_embedding, self._one_hot, self._support_prototypes, self._support_site,
                      self._support_contrast, same)
        if sign == 0:
            return everything
        keep = (self._support_polarity == 0) | (self._support_polarity == sign)
        owner = self._one_hot.argmax(1).numpy()
        moved = np.zeros_like(keep)
        if sign in self.polarity_maps:  # the clicks at the other polarity, translated, join those at this one
            keep, moved = np.ones_like(keep), self._support_polarity == -sign
        for k in range(self._one_hot.shape[1]):
            if not keep[owner == k].any():
                keep[owner == k] = True  # no click of this class at this polarity: all of them, as they are
        if keep.all() and not moved.any():
            return everything
        embedding = self._translated(self._support_embedding, moved, sign)
        mask = torch.from_numpy(keep)
        embedding, one_hot = embedding[mask], self._one_hot[mask]
        protos = (one_hot.T @ embedding) / one_hot.sum(0).unsqueeze(1)
        if self.base.net.metric == "cosine":
            protos = torch.nn.functional.normalize(protos, dim=1)
        return (embedding, one_hot, protos, None if self._support_site is None else self._support_site[mask],
                None if self._support_contrast is None else self._support_contrast[mask], same[mask])

    def set_support(self, support: CropSet) -> None:
        self.base.set_support(support)
        self._fit_support()

    @torch.no_grad()
    def _refine(self, embedded: torch.Tensor | None, bias_v: float | None = None,
                site_cos: torch.Tensor | None = None, contrast: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, ClassGaussian | None, ClassGaussian | None]:
        """The prototypes after :attr:`steps` soft k-means steps on ``embedded`` (this call's
        crops, their row-phase cosines ``site_cos`` and contrasts ``contrast``) and the pool, and
        the classes' site and contrast models (None without the cue)."""
        support, one_hot, protos, support_cos, support_contrast, same = self._start(bias_v)
        here = one_hot * same[:, None]  # the clicks the contrast is fitted on: at the scan's polarity
        pool = self._pool_for(bias_v)
        parts = [part for part in ((pool, self._pool_site, self._pool_contrast, self._pool_same(bias_v)),
                                   (embedded, site_cos, contrast, None if embedded is None else torch.ones(len(embedded))))
                 if part[0] is not None and len(part[0])]
        site = None if support_cos is None else ClassGaussian.fit(one_hot, support_cos)
        tone = None if support_contrast is None else ClassGaussian.fit(here, support_contrast, floor=CONTRAST_FLOOR)
        if not parts or self.steps <= 0:
            return protos, site, tone
        net, unlabelled = self.base.net, torch.cat([part[0] for part in parts])
        unlabelled_cos = None if site is None else torch.cat([part[1] for part in parts])
        unlabelled_contrast = None if tone is None else torch.cat([part[2] for part in parts])
        unlabelled_same = torch.cat([part[3] for part in parts])[:, None]

        def fitted(weights):  # the cues' classes from the soft assignment ``weights``
            return (None if site is None else ClassGaussian.fit(one_hot, support_cos, weights, unlabelled_cos),
                    None if tone is None else ClassGaussian.fit(here, support_contrast, weights * unlabelled_same,
                                                            unlabelled_contrast, floor=CONTRAST_FLOOR))

        site, tone = fitted(torch.softmax(self._logits(unlabelled, protos), dim=1))  # from the network's own first
        for _ in range(self.steps):
            weights = torch.softmax(self._logits(unlabelled, protos, site, unlabelled_cos, tone, unlabelled_contrast),
                                    dim=1)
            protos = (one_hot.T @ support + weights.T @ unlabelled) / (one_hot.sum(0) + weights.sum(0)).unsqueeze(1)
            if net.metric == "cosine":
                protos = torch.nn.functional.normalize(protos, dim=1)
            site, tone = fitted(weights)
        return protos, site, tone

    def _pool_same(self, bias_v: float | None) -> torch.Tensor | None:
        """``(n,)`` float: 1 for each pool crop from a scan at the polarity of ``bias_v`` or of
        unknown bias (all of them when either is unknown), else 0."""
        if self._pool_embedding is None:
            return None
        sign = bias_polarity(bias_v)
        if self._pool_polarity is None or sign == 0:
            return torch.ones(len(self._pool_embedding))
        return torch.from_numpy(((self._pool_polarity == 0) | (self._pool_polarity == sign)).astype(np.float32))

    def _pool_for(self, bias_v: float | None) -> torch.Tensor | None:
        """The pool's embeddings for a scan of sample bias ``bias_v``: those of crops from scans at
        the other polarity translated to the scan's where there is a map and the pool's biases are
        known (see "Polarity" above), the rest as they are."""
        sign = bias_polarity(bias_v)
        if self._pool_embedding is None or self._pool_polarity is None or sign not in self.polarity_maps:
            return self._pool_embedding
        return self._translated(self._pool_embedding, self._pool_polarity == -sign, sign)

    def _translated(self, embedded: torch.Tensor, rows: np.ndarray, sign: int) -> torch.Tensor:
        """``embedded`` with its ``rows`` (bool) moved by the map towards polarity ``sign`` (a copy;
        ``embedded`` itself when no row is)."""
        if not rows.any():
            return embedded
        out, mask = embedded.clone(), torch.from_numpy(rows)
        out[mask] = translate(self.polarity_maps[sign], out[mask], self.base.net.metric == "cosine")
        return out

    def _logits(self, embedded: torch.Tensor, protos: torch.Tensor, site: ClassGaussian | None = None,
                site_cos: torch.Tensor | None = None, tone: ClassGaussian | None = None,
                contrast: torch.Tensor | None = None) -> torch.Tensor:
        """The network's logits (minus the scaled squared distances), less the cues' penalties."""
        return -self.base.net.temperature * torch.cdist(embedded, protos).pow(2) - self._penalty(site, site_cos, tone, contrast)

    def _penalty(self, site: ClassGaussian | None, site_cos: torch.Tensor | None, tone: ClassGaussian | None,
                 contrast: torch.Tensor | None) -> torch.Tensor | float:
        """The site's and the contrast's penalties ``(n, classes)`` (0 without either)."""
        return ((0.0 if site is None else site.penalty(site_cos, self.site_weight))
                + (0.0 if tone is None else tone.penalty(contrast, self.contrast_weight)))

    def refined_prototypes(self, crops: np.ndarray, bias_v: float | None = None) -> torch.Tensor:
        """The prototypes after :attr:`steps` soft k-means steps on ``crops`` and the pool, for a
        scan of sample bias ``bias_v`` (V; None: unknown)."""
        embedded, site_cos, contrast = self._features(crops) if len(crops) else (None, None, None)
        return self._refine(embedded, bias_v, site_cos, contrast)[0]

    def _distances(self, crops: np.ndarray, bias_v: float | None) -> tuple[np.ndarray, np.ndarray]:
        """The network's squared distances ``(n, classes)`` to the refined prototypes, and the same
        with each crop's cue penalties (over the temperature, less their smallest over the classes)
        added; the two are equal without the site and contrast cues."""
        embedded, site_cos, contrast = self._features(crops)
        protos, site, tone = self._refine(embedded, bias_v, site_cos, contrast)
        d = torch.cdist(embedded, protos).pow(2)
        if site is None and tone is None:
            return d.numpy(), d.numpy()
        penalty = self._penalty(site, site_cos, tone, contrast) / self.base.net.temperature
        return d.numpy(), (d + penalty - penalty.min(dim=1, keepdim=True).values).numpy()

    def distances(self, crops: np.ndarray, bias_v: float | None = None) -> np.ndarray:
        """Squared distances ``(n, classes)`` of ``crops`` (of one scan, of sample bias ``bias_v``)
        to the prototypes refined on them (one forward pass), with the site and contrast cues' penalties added
        (:meth:`_distances`): the nearest class is that of the highest combined logit."""
        if len(crops) == 0:
            return np.zeros((0, len(self.base.labels)), dtype=np.float32)
        return self._distances(crops, bias_v)[1]

    def classify(self, crops: np.ndarray, bias_v: float | None = None) -> list[tuple[str, float]]:
        """Each crop's class by the combined distances; ``unknown`` when its network distance to
        the nearest prototype passes the unknown distance (which was calibrated on network
        distances): the cues choose among the classes, they never make a crop unknown."""
        if len(crops) == 0:
            return []
        network, combined = self._distances(crops, bias_v)
        return self.base.label(crops, combined, nearest=network.min(axis=1))
