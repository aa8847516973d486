"""``stmwatch eval fewshot --table``: the method's two tables, reproduced on simulator crops.

Crops are simulated twice with different seeds: the *train* set (seed ``TRAIN_SEED``) is all any
network ever sees in training; the *test* set (seed ``TEST_SEED``, never used in training) gives
the episodes. Every row is 4-way 1-shot, 100 episodes, 15 queries per class, episode seed 0.

- Same surface: trained on Si(001):H train crops, tested on Si(001):H test crops.
- New surface: trained on Si(001):H + TiO2(110) train crops, tested on Ge(001) test crops.
- SimpleShot (ResNet18): no ImageNet weights can be downloaded here, so this row's backbone is
  trained from scratch on surfaces *other than the test surface* (a generic embedding, as
  ImageNet's was for the method): Ge + TiO2 for the same-surface table, Si + TiO2 for the other.
- 1-NN on bare pixels learns nothing: it sees only each episode's support crops.
- Ablation: the prototypical row again with class generation (``GENERATE``), same seeds.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

from .crops import load_surface
from .episodes import DEFAULT_GENERATE
from .evaluation import evaluate
from .registry import ROWS
from .training import TrainConfig, save, train

log = logging.getLogger(__name__)

TRAIN_SEED, TEST_SEED, EPISODE_SEED = 1, 2, 0
TEST_PER_CLASS = 60  # 1 support + 15 queries per episode, drawn from 60
SURFACES = ("si001h", "ge001", "tio2110")
GENERATE = DEFAULT_GENERATE

# the method's published figures (percent, ± 95 % CI), row title -> (trained on, figure)
PUBLISHED = {
    "same": {"Prototypical": ("Si defects", "95.57 ± 0.01 %"), "Matching": ("Si defects", "94.95 ± 0.01 %"),
             "Relation": ("Si defects", "93.40 ± 0.01 %"), "SimpleShot (conv4)": ("Si defects", "92.93 ± 0.01 %"),
             "SimpleShot (ResNet18)": ("ImageNet", "66.87 ± 0.03 %"),
             "1-NN on bare pixels": ("Si defects", "76.57 ± 0.02 %")},
    "new": {"Prototypical": ("Si defects", "61.25 ± 0.02 %"), "Matching": ("Si defects", "61.61 ± 0.02 %"),
            "Relation": ("Si defects", "25.07 ± 0.01 % (overfits)"),
            "SimpleShot (conv4)": ("Si defects", "48.18 ± 0.01 %"), "SimpleShot (ResNet18)": ("ImageNet", "43.00 ± 0.02 %"),
            "1-NN on bare pixels": ("Ge defects", "46.64 ± 0.02 %")},
}


@dataclasses.dataclass
class Setting:
    """One table: test surface, training surfaces (and those of the ResNet18 row)."""

    key: str
    title: str
    test: str
    train: tuple[str, ...]
    train_resnet: tuple[str, ...]


SETTINGS = (
    Setting("same", "Same surface: Si(001):H, 4-way 1-shot", "si001h", ("si001h",), ("ge001", "tio2110")),
    Setting("new", "New surface: Ge(001), 4-way 1-shot", "ge001", ("si001h", "tio2110"), ("si001h", "tio2110")),
)


def simulate_crops(work: Path, per_class: int) -> tuple[Path, Path]:
    """The train (``per_class`` crops per class) and test (``TEST_PER_CLASS``) crop folders under
    ``work``, simulated unless already there."""
    from stmwatch.models.sim.simulate import make_crops

    folders = []
    for name, seed, n in (("train", TRAIN_SEED, per_class), ("test", TEST_SEED, TEST_PER_CLASS)):
        folder = work / f"crops-{name}-seed{seed}"
        if not all((folder / s).is_dir() for s in SURFACES):
            log.warning("simulating %d crops per class (seed %d) into %s", n, seed, folder)
            make_crops(folder, list(SURFACES), n, seed)
        folders.append(folder)
    return folders[0], folders[1]


# every row: (title, method, backbone, prototypical metric, class-generation transforms)
PLAN = [(title, method, backbone, "euclidean", ()) for title, method, backbone in ROWS] + [
    ("Prototypical + generated classes", "proto", "conv4", "euclidean", GENERATE),
    ("Prototypical, cosine metric (as shipped)", "proto", "conv4", "cosine", ()),
    ("Prototypical, cosine + generated classes", "proto", "conv4", "cosine", GENERATE),
]


def run_setting(setting: Setting, train_dir: Path, test_dir: Path, work: Path, episodes: int,
                train_episodes: int, threads: int = 1, only: tuple[str, ...] = ()) -> list[dict]:
    """Train and evaluate every row of ``PLAN`` (or those titled in ``only``) for one table."""
    import torch

    torch.set_num_threads(threads)
    rows = []
    tests = load_surface(test_dir, setting.test)
    for title, method, backbone, metric, generate in PLAN:
        if only and title not in only:
            continue
        surfaces = setting.train_resnet if backbone == "resnet18" else setting.train
        config = TrainConfig(method=method, backbone=backbone, metric=metric, episodes=train_episodes,
                             seed=TRAIN_SEED, generate=tuple(generate), surfaces=surfaces)
        t0 = time.perf_counter()
        net = train([load_surface(train_dir, s) for s in surfaces], config)
        if method != "pixel_nn":
            tag = f"{setting.key}-{method}-{backbone}" + ("-cos" if metric == "cosine" else "") + \
                ("-gen" if generate else "")
            save(work / "weights" / f"{tag}.pt", net, config)
        r = evaluate(net, tests, way=4, shot=1, query=15, episodes=episodes, seed=EPISODE_SEED)
        r.update(title=title, method=method, backbone=backbone, metric=metric,
                 trained_on=[] if method == "pixel_nn" else list(surfaces), generate=list(generate),
                 train_s=round(time.perf_counter() - t0, 1))
        rows.append(r)
        log.warning("%s: %s: %.2f ± %.2f %% (%.0f s)", setting.key, title, 100 * r["accuracy"], 100 * r["ci95"],
                    r["train_s"])
    return rows


def run_rows(train_dir: Path, test_dir: Path, work: Path, episodes: int, train_episodes: int,
             jobs: int = 1) -> dict:
    """Both tables (one process per table when ``jobs`` > 1); returns the rows by table key."""
    if jobs <= 1:
        return {s.key: run_setting(s, train_dir, test_dir, work, episodes, train_episodes) for s in SETTINGS}
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(min(jobs, len(SETTINGS))) as pool:
        futures = {s.key: pool.submit(run_setting, s, train_dir, test_dir, work, episodes, train_episodes)
                   for s in SETTINGS}
        return {k: f.result() for k, f in futures.items()}


TITLES = {"si001h": "Si", "ge001": "Ge", "tio2110": "TiO2"}


def markdown(results: dict, command: str) -> str:
    """Both tables as Markdown, the method's figures beside stmwatch's."""
    out = ["# Few-shot classification: the method's tables on simulator crops", "",
           "Generated by (CPU; see docs/fewshot.md for the discussion):", "", "```", command, "```", "",
           f"Train crops: simulator seed {TRAIN_SEED}; test crops: seed {TEST_SEED} (never used in training). "
           f"4-way 1-shot, 15 queries per class, {results['same'][0]['episodes']} episodes (episode seed "
           f"{EPISODE_SEED}); accuracy is the mean over episodes ± the half-width of its 95 % confidence interval.",
           "The method's ± figures are as printed on the poster.", ""]
    for setting in SETTINGS:
        out += [f"## {setting.title}", "",
                "| model | stmwatch: trained on | stmwatch accuracy | method: trained on | method accuracy |",
                "|---|---|---|---|---|"]
        for r in results[setting.key]:
            trained = " + ".join(TITLES[s] for s in r["trained_on"]) + " crops" if r["trained_on"] else \
                "nothing (support crops only)"
            if r["backbone"] == "resnet18":
                trained += ", from scratch (no ImageNet weights available)"
            if r["generate"]:
                trained += f", + classes generated by {'/'.join(r['generate'])}"
            pub_on, pub = PUBLISHED[setting.key].get(r["title"], ("—", "—"))
            out.append(f"| {r['title']} | {trained} | {100 * r['accuracy']:.2f} ± {100 * r['ci95']:.2f} % | "
                       f"{pub_on} | {pub} |")
        out.append("")
    return "\n".join(out)


def run_table(args) -> int:
    """Entry point of ``stmwatch eval fewshot --table``."""
    from rich.console import Console

    console = Console()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    train_dir, test_dir = simulate_crops(work, args.per_class)
    t0 = time.perf_counter()
    results = run_rows(train_dir, test_dir, work, args.episodes, args.train_episodes, args.jobs)
    command = (f"stmwatch eval fewshot --table --work {args.work} --per-class {args.per_class} "
               f"--train-episodes {args.train_episodes} --episodes {args.episodes} --jobs {args.jobs}")
    console.print(f"both tables in {time.perf_counter() - t0:.0f} s")
    out = Path(args.out_md)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown(results, command))
    out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    console.print(f"wrote {out} and {out.with_suffix('.json')}")
    return 0
