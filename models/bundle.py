"""Model bundles: the models one lab uses, in one folder, checked before use (``stmwatch adapt`` writes them).

A bundle is a folder::

    bundle.json   format, id, surface, created, files {relative path: sha256}, figures
    unet.pt       the UNet checkpoint (as ``stmwatch train unet`` writes it)
    fewshot.pt    the few-shot classifier checkpoint (optional)
    support/      a support set <class>/*.npy (optional)
    config.json   the settings it was made with
    CARD.md       what it is, how it was made, before/after figures on held-back scans

Its **id** is ``<surface>-<first 12 hex of the sha256 over the sorted (path, sha256) list>``: the
same files give the same id. :func:`load_bundle` refuses a bundle whose manifest is missing or
unreadable, lists a file that is missing, or holds a file whose sha256 differs, with a
:class:`BundleError` naming the folder and the problem. ``[models] bundle`` (and ``--models`` of
``process``, ``eval oneclick``, ``support suggest``) point at one; the id travels in
``model_versions`` to the database and the overlays.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import shutil
from pathlib import Path

FORMAT = "stmwatch-bundle/1"
MANIFEST = "bundle.json"


class BundleError(ValueError):
    """A bundle that cannot be used; the message names the folder and the problem."""


@dataclasses.dataclass(frozen=True)
class Bundle:
    path: Path
    id: str
    surface: str
    unet: Path | None
    classifier: Path | None
    support: Path | None
    manifest: dict


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def bundle_id(surface: str, files: dict[str, str]) -> str:
    digest = hashlib.sha256("\n".join(f"{k} {v}" for k, v in sorted(files.items())).encode()).hexdigest()
    return f"{surface}-{digest[:12]}"


def write_bundle(folder: str | Path, surface: str, *, unet: str | Path | None = None,
                 classifier: str | Path | None = None, support: str | Path | None = None,
                 made_with: dict | None = None, figures: dict | None = None, card: str = "",
                 extra: dict[str, str | Path] | None = None) -> Bundle:
    """Copy the given files into ``folder`` (created; an existing bundle there is replaced file by
    file), hash everything and write the manifest last. ``extra`` adds files (name → source), e.g.
    the card's figures. Returns the bundle as :func:`load_bundle` reads it."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # a half-written bundle is refused, never half-used
    if unet:
        shutil.copyfile(unet, out / "unet.pt")
    if classifier:
        shutil.copyfile(classifier, out / "fewshot.pt")
    if support:
        if (out / "support").exists():
            shutil.rmtree(out / "support")
        shutil.copytree(support, out / "support")
    for name, source in (extra or {}).items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, out / name)
    (out / "config.json").write_text(json.dumps(made_with or {}, indent=1, default=str) + "\n")
    (out / "CARD.md").write_text(card or f"# Model bundle for {surface}\n")
    files = {str(p.relative_to(out)): sha256(p) for p in sorted(out.rglob("*")) if p.is_file() and p.name != MANIFEST}
    manifest = {"format": FORMAT, "id": bundle_id(surface, files), "surface": surface,
                "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "unet": "unet.pt" if unet else None, "classifier": "fewshot.pt" if classifier else None,
                "support": "support" if support else None, "figures": figures or {}, "files": files}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return load_bundle(out)


def load_bundle(folder: str | Path) -> Bundle:
    """The bundle in ``folder``, every file checked against its sha256; :class:`BundleError` else."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise BundleError(f"model bundle {root}: not a folder")
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except FileNotFoundError:
        raise BundleError(f"model bundle {root}: no {MANIFEST} (not a bundle, or one still being written)") from None
    except (OSError, ValueError) as exc:
        raise BundleError(f"model bundle {root}: {MANIFEST} is unreadable ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not isinstance(manifest.get("files"), dict):
        raise BundleError(f"model bundle {root}: {MANIFEST} is not a {FORMAT} manifest")
    files: dict[str, str] = manifest["files"]
    for name, digest in files.items():
        path = root / name
        if not path.is_file():
            raise BundleError(f"model bundle {root}: {name} is missing")
        if sha256(path) != digest:
            raise BundleError(f"model bundle {root}: {name} is corrupt (sha256 differs from {MANIFEST})")
    surface = str(manifest.get("surface", ""))
    if manifest.get("id") != bundle_id(surface, files):
        raise BundleError(f"model bundle {root}: its id does not match its files")

    def part(key: str) -> Path | None:
        name = manifest.get(key)
        if not name:
            return None
        if key != "support" and name not in files:
            raise BundleError(f"model bundle {root}: {name} is not listed in {MANIFEST}")
        return root / name

    return Bundle(root, manifest["id"], surface, part("unet"), part("classifier"), part("support"), manifest)
