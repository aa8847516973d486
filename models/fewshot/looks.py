"""Crops that know how they were imaged, and cross-look episodes (issue 18, one-click labels).

One click shows a class in *one* look: a scan of one bias polarity, through one tip and contrast.
The scans it must label have other looks: the other polarity (Si/Ge classes look different in
filled and empty states; TiO2(110) may be imaged in empty states, with the corrugation inverted)
and other contrast. A *look* here is a small integer per crop: ``2 * empty + inverted`` (empty:
the simulator rendered empty states; inverted: the domain randomiser inverted the corrugation).

- :func:`.look_crops.look_crops` (a module of its own: it draws on the simulator, which
  inference must not import) cuts the crops of one simulated scan the daemon's way (``prepare`` and
  ``crops_at`` at each true defect, a small random offset, each crop normalised on its own) with
  each crop's class and look; the scan is the training style or a domain-randomised one
  (:func:`stmwatch.models.sim.randomise.randomised_scan`, either bias sign, 20 % inverted).
- :class:`LookSet` holds such crops of one surface (``save``/``load`` as one ``.npz``).
- :func:`sample_cross_episode` draws an N-way K-shot episode whose support crops of a class share
  one look and whose queries have *another* look where the class has one: the embedding learns
  that a class's looks belong together. Used by :mod:`.training` (``TrainConfig.cross_look``) and
  to measure (:func:`cross_look_accuracy`).
- A set may also know each crop's *session* (``sessions``: the microscope it was imaged with,
  :func:`.look_crops.make_session_set`). :func:`sample_session_episode` then draws support and
  queries from one session, as the operator's clicks and the scans they label come from one
  microscope (:func:`session_accuracy` measures it).

Only the training style and the randomiser are drawn here (the foreign style is for measuring).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from .crops import CropSet
from .episodes import Episode, sample_episode
from .evaluation import episode_accuracies



@dataclasses.dataclass
class LookSet:
    """Crops of one surface: ``crops`` float32 ``(n, 2, 32, 32)``, ``classes`` ``(n,)`` str,
    ``looks`` ``(n,)`` int (``2 * empty + inverted``); ``sessions`` ``(n,)`` int, the microscope each
    crop was imaged with, or None when the crops' microscopes are not known apart."""

    surface: str
    crops: np.ndarray
    classes: np.ndarray
    looks: np.ndarray
    sessions: np.ndarray | None = None

    def save(self, path: Path | str) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        extra = {} if self.sessions is None else {"sessions": self.sessions}
        np.savez_compressed(path, surface=self.surface, crops=self.crops, classes=self.classes, looks=self.looks,
                            **extra)
        return path

    @classmethod
    def load(cls, path: Path | str) -> LookSet:
        with np.load(Path(path)) as z:
            sessions = z["sessions"].astype(np.int64) if "sessions" in z.files else None
            return cls(str(z["surface"]), z["crops"].astype(np.float32), z["classes"].astype(str),
                       z["looks"].astype(np.int64), sessions)

    def within(self, limit: float = 25.0) -> LookSet:
        """The crops whose values all lie within ±``limit`` (robust spreads): a crop that is flat but
        for a few pixels (a scan's edge, a lost line) normalises to huge values, and a handful of them
        wreck a network's BatchNorm statistics in training."""
        keep = np.abs(self.crops).reshape(len(self.crops), -1).max(axis=1) <= limit if len(self.crops) else []
        return LookSet(self.surface, self.crops[keep], self.classes[keep], self.looks[keep],
                       None if self.sessions is None else self.sessions[keep])

    def crop_set(self) -> CropSet:
        """The crops as a plain :class:`CropSet` (looks dropped)."""
        return CropSet(self.surface, {c: self.crops[self.classes == c] for c in sorted(set(self.classes))})

    def counts(self) -> dict[str, dict[int, int]]:
        """Crops per class and look."""
        return {c: {int(k): int(np.sum((self.classes == c) & (self.looks == k))) for k in sorted(set(self.looks))}
                for c in sorted(set(self.classes))}


def sample_cross_episode(looks: LookSet, way: int, shot: int, query: int, rng: np.random.Generator) -> Episode:
    """An episode of ``way`` classes (drawn among those with ``shot + query`` crops): for each class
    the support is ``shot`` crops of one look (drawn among the class's looks with at least ``shot``
    crops) and the queries ``query`` crops of the *other* looks (of any look if the class has only
    one). Raises ``ValueError`` when too few classes have enough crops."""
    names = sorted(set(looks.classes))
    pool = [c for c in names if np.sum(looks.classes == c) >= shot + query]
    if len(pool) < way:
        raise ValueError(f"{looks.surface}: only {len(pool)} classes have {shot + query} crops; a {way}-way episode needs {way}")
    chosen = [pool[i] for i in rng.choice(len(pool), size=way, replace=False)]
    sup, qry = [], []
    for c in chosen:
        idx = np.flatnonzero(looks.classes == c)
        lk = looks.looks[idx]
        options = [k for k in np.unique(lk) if np.sum(lk == k) >= shot and np.sum(lk != k) >= query]
        if options:
            k = options[rng.integers(len(options))]
            s = rng.choice(idx[lk == k], size=shot, replace=False)
            q = rng.choice(idx[lk != k], size=query, replace=False)
        else:
            pick = rng.choice(idx, size=shot + query, replace=False)
            s, q = pick[:shot], pick[shot:]
        sup.append(looks.crops[s])
        qry.append(looks.crops[q])
    labels = np.arange(way, dtype=np.int64)
    return Episode(np.concatenate(sup), np.repeat(labels, shot), np.concatenate(qry), np.repeat(labels, query), chosen)


def session_crop_sets(looks: LookSet, min_crops: int) -> list[CropSet]:
    """The crops of each session (microscope) of ``looks`` as a :class:`CropSet`, for the sessions
    with at least 2 classes of ``min_crops`` crops. Raises ``ValueError`` when ``looks`` has no
    sessions or none has 2 such classes."""
    if looks.sessions is None:
        raise ValueError(f"{looks.surface}: the crops' sessions are not known")
    out = []
    for m in np.unique(looks.sessions):
        mine = looks.sessions == m
        session = CropSet(looks.surface, {c: looks.crops[mine & (looks.classes == c)]
                                          for c in sorted(set(looks.classes[mine]))})
        if sum(len(x) >= min_crops for x in session.crops.values()) >= 2:
            out.append(session)
    if not out:
        raise ValueError(f"{looks.surface}: no session has 2 classes of {min_crops} crops")
    return out


def sample_session_episode(sessions: list[CropSet], way: int, shot: int, query: int,
                           rng: np.random.Generator) -> Episode:
    """An episode whose support and queries all come from one session (microscope): a session of
    :func:`session_crop_sets` (made with ``min_crops = shot + query``) drawn at random, then up to
    ``way`` of its classes with ``shot + query`` crops (fewer where it has fewer), as
    :func:`~.episodes.sample_episode` draws them."""
    session = sessions[rng.integers(len(sessions))]
    eligible = sum(len(x) >= shot + query for x in session.crops.values())
    return sample_episode(session, min(way, eligible), shot, query, rng)


def session_accuracy(method, looks: LookSet, episodes: int = 60, way: int = 4, query: int = 5, seed: int = 0) -> float:
    """Mean query accuracy of ``method`` over ``episodes`` 1-shot episodes drawn within one session
    each (:func:`sample_session_episode`): the operator's one click, on the session's microscope."""
    rng = np.random.default_rng(seed)
    sessions = session_crop_sets(looks, 1 + query)
    drawn = (sample_session_episode(sessions, way, 1, query, rng) for _ in range(episodes))
    return float(np.mean(episode_accuracies(method, drawn)))


def cross_look_accuracy(method, looks: LookSet, episodes: int = 60, way: int = 4, query: int = 15,
                        seed: int = 0, cross: bool = True) -> float:
    """Mean query accuracy of ``method`` (a :class:`~.base.FewShotMethod`, crops given as they are)
    over ``episodes`` ``way``-way 1-shot episodes of ``looks``: cross-look (:func:`sample_cross_episode`)
    or, with ``cross`` False, any look."""
    rng = np.random.default_rng(seed)
    plain = looks.crop_set()
    way = min(way, len(plain.crops))
    drawn = (sample_cross_episode(looks, way, 1, query, rng) if cross else sample_episode(plain, way, 1, query, rng)
             for _ in range(episodes))
    return float(np.mean(episode_accuracies(method, drawn)))
